// The page: the agent and its link to the cloud, the VM selector (when there are several), errors
// (and config.json's, while it is invalid), then for the selected VM its screen, where it runs,
// placement, live plots, decisions and history; the settings last.
import { useController, useUi } from '../hooks.ts';
import { Display } from './Display.tsx';
import { MovePanel } from './MovePanel.tsx';
import { DecisionLog, PlacementPanel } from './PlacementPanel.tsx';
import { Plots } from './Plots.tsx';
import { HistoryTable } from './HistoryTable.tsx';
import { ConfigBanner, Settings } from './Settings.tsx';
import { formatClock } from '../format.ts';
import { locationOf } from '../state.ts';

export function App() {
  const selected = useUi((s) => s.selected);
  const hasStatus = useUi((s) => s.status !== undefined);
  return (
    <>
      <Header />
      <Errors />
      <ConfigBanner />
      {!hasStatus ? (
        <p className="muted centered">Connecting to the snowbird agent…</p>
      ) : selected === undefined ? (
        <p className="centered">
          No VMs yet. Create and start one: <code>snowbird vm create demo &amp;&amp; snowbird vm start demo</code>
        </p>
      ) : (
        <main key={selected}>
          <div className="top">
            <Display vm={selected} />
            <div className="side">
              <MovePanel vm={selected} />
              <PlacementPanel vm={selected} />
            </div>
          </div>
          <Plots vm={selected} />
          <div className="logs">
            <HistoryTable vm={selected} />
            <DecisionLog vm={selected} />
          </div>
        </main>
      )}
      {hasStatus && (
        <div className="settings-area">
          <Settings />
        </div>
      )}
    </>
  );
}

function Header() {
  const controller = useController();
  const connection = useUi((s) => s.connection);
  const site = useUi((s) => s.status?.site);
  const peer = useUi((s) => s.status?.peer);
  const vms = useUi((s) => s.status?.vms);
  const selected = useUi((s) => s.selected);
  const status = useUi((s) => s.status);
  const settling = useUi((s) => s.settling);
  return (
    <header>
      <h1>snowbird</h1>
      {vms !== undefined && vms.length > 1 ? (
        <label className="vm-select">
          VM{' '}
          <select data-testid="vm-select" value={selected ?? ''} onChange={(e) => controller.select(e.target.value)}>
            {vms.map((v) => (
              <option key={v.name} value={v.name}>
                {v.name} ({locationOf({ status, settling }, v.name)})
              </option>
            ))}
          </select>
        </label>
      ) : (
        selected !== undefined && <span className="vm-name" data-testid="vm-name">{selected}</span>
      )}
      <span className="spacer" />
      <span className="muted">{site ? `laptop agent ${site}` : ''}</span>
      <span className={`dot ${peer?.connected ? 'ok' : 'bad'}`} title={peer?.url ?? ''}>
        cloud {peer === undefined ? '…' : !peer.paired ? 'not paired' : peer.connected ? `connected (${peer.name ?? '?'})` : 'not connected'}
      </span>
      <span className={`dot ${connection.state === 'open' ? 'ok' : 'bad'}`} data-testid="connection" data-state={connection.state} title={connection.detail ?? ''}>
        agent {connection.state === 'open' ? 'connected' : connection.state === 'connecting' ? 'connecting…' : 'disconnected'}
      </span>
    </header>
  );
}

function Errors() {
  const controller = useController();
  const errors = useUi((s) => s.errors);
  if (errors.length === 0) return null;
  return (
    <div className="errors" role="alert" data-testid="errors">
      {errors.map((e) => (
        <div key={e.id} className={e.kind} data-code={e.code}>
          <span>
            <strong>
              {e.what} {e.kind === 'notice' ? e.code : 'failed'}
            </strong>{' '}
            ({e.kind === 'notice' ? '' : `${e.code}, `}
            {formatClock(e.at)}): {e.message}
          </span>
          <button type="button" aria-label="Dismiss" onClick={() => controller.dismissError(e.id)}>
            ×
          </button>
        </div>
      ))}
    </div>
  );
}
