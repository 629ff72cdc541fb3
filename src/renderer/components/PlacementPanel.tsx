// Automatic placement: the mode (auto, or a pin to one site), the policy's latest decision with its
// reasons, and the decision log (moves and changes of rule, newest first).
import { useController, useUi } from '../hooks.ts';
import { formatClock, SITE_NAMES } from '../format.ts';
import type { PlacementDecision, PlacementMode } from '../../shared/placement.ts';

const MODES: { mode: PlacementMode; label: string; help: string }[] = [
  { mode: 'auto', label: 'Auto', help: 'snowbird moves the VM as its work changes' },
  { mode: 'keep-edge', label: 'Keep on laptop', help: 'a pin: the VM stays on the laptop' },
  { mode: 'keep-core', label: 'Keep in cloud', help: 'a pin: the VM stays in the cloud' },
];

function verdict(d: PlacementDecision): string {
  return d.action === 'migrate' ? `move → ${SITE_NAMES[d.to]} (${d.rule})` : `stay (${d.rule})`;
}

export function PlacementPanel({ vm }: { vm: string }) {
  const controller = useController();
  const placement = useUi((s) => s.placement[vm]);
  const mode = placement?.mode;
  const latest = placement?.decision;
  return (
    <section className="panel placement">
      <h2>Placement</h2>
      <div className="modes" role="radiogroup" aria-label="Placement mode" data-testid="placement-mode" data-mode={mode ?? ''}>
        {MODES.map((m) => (
          <label key={m.mode} title={m.help} className={mode === m.mode ? 'selected' : ''}>
            <input type="radio" name={`mode-${vm}`} value={m.mode} checked={mode === m.mode} disabled={mode === undefined} onChange={() => void controller.setMode(vm, m.mode)} />
            {m.label}
          </label>
        ))}
      </div>
      <p className="muted">{MODES.find((m) => m.mode === mode)?.help ?? '…'}</p>
      {latest ? (
        <div className="decision" data-testid="latest-decision" data-rule={latest.rule} data-phase={latest.phase}>
          <div>
            Now: <strong>{verdict(latest)}</strong> — the VM looks <strong>{latest.phase}</strong> ({Math.round(latest.confidence * 100)} % sure)
          </div>
          <ul>
            {latest.reasons.slice(0, 3).map((r) => (
              <li key={r}>{r}</li>
            ))}
          </ul>
        </div>
      ) : (
        <p className="muted">No decision yet: the policy decides once it has samples.</p>
      )}
    </section>
  );
}

export function DecisionLog({ vm }: { vm: string }) {
  const decisions = useUi((s) => s.decisions[vm]);
  return (
    <section className="panel decisions">
      <h2>Decision log</h2>
      {decisions === undefined || decisions.length === 0 ? (
        <p className="muted">No decisions recorded yet.</p>
      ) : (
        <table data-testid="decision-log">
          <thead>
            <tr>
              <th>time</th>
              <th>decision</th>
              <th>at</th>
              <th>phase</th>
              <th>why</th>
            </tr>
          </thead>
          <tbody>
            {decisions.map((d, i) => (
              <tr key={`${d.at}-${i}`} className={d.action === 'migrate' ? 'move' : ''} data-rule={d.rule} data-action={d.action}>
                <td>{formatClock(d.at)}</td>
                <td>{verdict(d)}</td>
                <td>{SITE_NAMES[d.site]}</td>
                <td>
                  {d.phase} ({Math.round(d.confidence * 100)} %)
                </td>
                <td className="reasons">{d.reasons.join('; ')}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
