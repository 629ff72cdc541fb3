// Where the VM runs (badge), the two moves ("Send to cloud", "Bring back") and, while a move runs
// (the user's or the policy's), its progress with a Cancel button.
import { useState } from 'react';
import { useController, useUi } from '../hooks.ts';
import { locationOf, progressOf } from '../state.ts';
import { formatMs, SITE_NAMES } from '../format.ts';
import { formatBytes } from '../../shared/format.ts';
import { MIGRATION_PHASES } from '../../shared/migration.ts';
import type { ProgressView } from '../../shared/progress.ts';

const BADGE_TEXT = { edge: 'On the laptop', core: 'In the cloud', moving: 'Moving', stopped: 'Stopped' } as const;

export function MovePanel({ vm }: { vm: string }) {
  const controller = useController();
  const location = useUi((s) => locationOf(s, vm));
  const progress = useUi((s) => progressOf(s, vm));
  const move = useUi((s) => s.moves[vm]);
  const peerConnected = useUi((s) => s.status?.peer.connected ?? false);
  const busy = move !== undefined || location === 'moving';

  return (
    <section className="panel move">
      <h2>Where it runs</h2>
      <div className="badge-row">
        <span className={`badge ${location ?? 'unknown'}`} data-testid="location" data-location={location ?? 'unknown'}>
          {location === undefined ? '…' : BADGE_TEXT[location]}
          {location === 'edge' || location === 'core' ? <small> ({location})</small> : null}
        </span>
        {progress && <span className="muted">{SITE_NAMES[progress.from]} → {SITE_NAMES[progress.to]}</span>}
      </div>
      <div className="buttons">
        <button type="button" data-testid="send-to-cloud" disabled={busy || location !== 'edge' || !peerConnected} onClick={() => void controller.migrate(vm, 'core')}>
          Send to cloud
        </button>
        <button type="button" data-testid="bring-back" disabled={busy || location !== 'core' || !peerConnected} onClick={() => void controller.migrate(vm, 'edge')}>
          Bring back
        </button>
        {busy && (
          <button type="button" className="danger" data-testid="cancel" disabled={move?.cancelling ?? false} onClick={() => void controller.cancel(vm)}>
            {move?.cancelling ? 'Cancelling…' : 'Cancel'}
          </button>
        )}
        {location === 'stopped' && (
          <button type="button" data-testid="start" onClick={() => void controller.startVm(vm)}>
            Start
          </button>
        )}
        {(location === 'edge' || location === 'core') && !busy && <StopButton onStop={() => void controller.stopVm(vm)} />}
      </div>
      {!peerConnected && <p className="warning">The cloud (core) is not connected: moves are not possible now.</p>}
      {busy && <Progress progress={progress} />}
    </section>
  );
}

/** Powering a VM off loses what its guest did not save: the button asks first, in place. */
function StopButton({ onStop }: { onStop: () => void }) {
  const [asking, setAsking] = useState(false);
  if (!asking) {
    return (
      <button type="button" data-testid="stop" onClick={() => setAsking(true)}>
        Stop…
      </button>
    );
  }
  return (
    <span className="confirm">
      Power the VM off?{' '}
      <button type="button" className="danger" data-testid="stop-confirm" onClick={() => (setAsking(false), onStop())}>
        Power off
      </button>
      <button type="button" data-testid="stop-keep" onClick={() => setAsking(false)}>
        Keep it running
      </button>
    </span>
  );
}

function Progress({ progress }: { progress: ProgressView | undefined }) {
  if (progress === undefined) return <p className="muted" data-testid="progress-text">Starting the move…</p>;
  const { total } = progress;
  const fraction = total ? Math.min(1, progress.bytes / total) : undefined;
  const current = progress.phaseNumber - 1;
  return (
    <div className="progress" data-testid="progress" data-phase={progress.phase} data-bytes={progress.bytes} data-total={total} data-growing={progress.totalGrowing}>
      <ol className="phases">
        {MIGRATION_PHASES.map((phase, i) => (
          <li key={phase} className={i < current ? 'done' : i === current ? 'current' : ''}>
            {phase}
          </li>
        ))}
      </ol>
      {fraction === undefined ? <progress /> : <progress max={1} value={fraction} />}
      <p data-testid="progress-text">
        <strong>{progress.phase}</strong> ({progress.phaseNumber}/{progress.phaseCount}): {formatBytes(progress.bytes)}
        {total === undefined ? ' sent' : <> of {formatBytes(total)}{progress.totalGrowing && <span title="memory passes re-send what the guest writes meanwhile"> (growing)</span>}</>}
        {progress.rate > 0 && <> · {formatBytes(progress.rate)}/s</>}
        {progress.etaSeconds !== undefined && <> · ETA {formatMs(progress.etaSeconds * 1000)}</>}
        {' · '}
        {formatMs(progress.elapsedMs)} so far
      </p>
    </div>
  );
}
