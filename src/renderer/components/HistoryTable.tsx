// Past moves of the VM, newest first: when, which way, who asked (and why), how long, the guest's
// pause, what crossed the link, and how the memory went (the strategy; through dedup, its raw size →
// what crossed the link, and why dedup was or was not used on hover).
import { useUi } from '../hooks.ts';
import { formatClock, formatDateTime, formatMs, recordBytes, SITE_NAMES } from '../format.ts';
import { formatBytes, formatStrategy } from '../../shared/format.ts';

export function HistoryTable({ vm }: { vm: string }) {
  const records = useUi((s) => s.history[vm]);
  return (
    <section className="panel history">
      <h2>Migration history</h2>
      {records === undefined || records.length === 0 ? (
        <p className="muted">No moves yet.</p>
      ) : (
        <table data-testid="history">
          <thead>
            <tr>
              <th>started</th>
              <th>move</th>
              <th>by</th>
              <th>outcome</th>
              <th className="num">total</th>
              <th className="num">downtime</th>
              <th className="num">bytes</th>
              <th>strategy</th>
            </tr>
          </thead>
          <tbody>
            {records.map((r) => (
              <tr key={r.migrationId} data-to={r.to} data-outcome={r.outcome} className={r.outcome === 'aborted' ? 'failed' : ''}>
                {/* Today's moves show the time alone (the date on hover): the figures' columns keep their room at 1280 px. */}
                <td className="nowrap" title={formatDateTime(Date.parse(r.startedAt))}>
                  {isToday(Date.parse(r.startedAt)) ? formatClock(Date.parse(r.startedAt)) : formatDateTime(Date.parse(r.startedAt))}
                </td>
                <td className="nowrap">
                  {SITE_NAMES[r.from]} → {SITE_NAMES[r.to]}
                </td>
                {/* Why: on hover, so the figures' columns stay in view however long the reasons are. */}
                <td title={r.trigger?.reasons.join('\n')} className={r.trigger && r.trigger.reasons.length > 0 ? 'has-reasons' : ''}>
                  {r.trigger?.by ?? 'user'}
                </td>
                <td title={r.error} className={r.error ? 'has-reasons' : ''}>
                  {r.outcome === 'committed' ? 'moved' : `${r.outcome === 'cancelled' ? 'cancelled' : 'failed'}${r.failedPhase ? ` in ${r.failedPhase}` : ''}`}
                </td>
                <td className="num">{formatMs(r.totalMs)}</td>
                <td className="num" data-testid="downtime">{r.downtimeMs === undefined ? '–' : formatMs(r.downtimeMs)}</td>
                <td className="num" data-testid="bytes">{formatBytes(recordBytes(r))}</td>
                <td data-testid="strategy" title={[r.memory?.reason, r.dedup?.reason === undefined ? undefined : `dedup ${r.dedup.reason}`].filter(Boolean).join('\n') || undefined}>
                  {formatStrategy(r)}
                  {r.memory?.postcopyMs !== undefined && <div className="reasons" data-testid="postcopy">post-copy {formatMs(r.memory.postcopyMs)}</div>}
                  {r.dedup?.used && (
                    <div className="reasons" data-testid="dedup">
                      dedup: memory {formatBytes(r.dedup.rawBytes)} → {formatBytes(r.streamBytes['migration'] ?? 0)}
                    </div>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function isToday(at: number): boolean {
  return new Date(at).toDateString() === new Date().toDateString();
}
