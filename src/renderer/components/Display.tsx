// The VM's live screen: noVNC connected to the edge agent's display gateway (the `display` command's
// URL). The gateway stays on the laptop while the VM moves, so this connection never has to change;
// if it drops anyway (the agent restarted), the app asks for the gateway again and reconnects.
import { useEffect, useRef, useState } from 'react';
import RFB from '@novnc/novnc';
import { useController, useUi } from '../hooks.ts';
import { locationOf } from '../state.ts';
import { SITE_NAMES } from '../format.ts';

const RECONNECT_MS = 2_000;

export function Display({ vm }: { vm: string }) {
  const controller = useController();
  const url = useUi((s) => s.display[vm]?.webSocketUrl);
  const view = useUi((s) => (url === undefined || s.displayView[vm]?.url !== url ? undefined : s.displayView[vm]));
  const location = useUi((s) => locationOf(s, vm));
  const target = useRef<HTMLDivElement>(null);
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    const element = target.current;
    if (url === undefined || element === null) return;
    let disposed = false;
    let retry: ReturnType<typeof setTimeout> | undefined;
    const rfb = new RFB(element, url, { shared: true });
    rfb.scaleViewport = true;
    rfb.focusOnClick = true;
    rfb.background = '#111';
    rfb.addEventListener('connect', () => {
      if (!disposed) controller.displayEvent(vm, url, 'connect');
    });
    rfb.addEventListener('disconnect', (event) => {
      if (disposed) return;
      controller.displayEvent(vm, url, 'disconnect', event.detail.clean ? 'the display gateway closed the connection' : 'the connection to the display gateway was lost');
      retry = setTimeout(() => {
        void controller.openDisplay(vm).then(() => setAttempt((n) => n + 1));
      }, RECONNECT_MS);
    });
    return () => {
      disposed = true;
      clearTimeout(retry);
      rfb.disconnect();
    };
  }, [controller, vm, url, attempt]);

  const where = location === 'edge' || location === 'core' ? `the VM runs in the ${SITE_NAMES[location]} (${location})` : location === 'moving' ? 'the VM is moving; the screen stays here' : undefined;
  return (
    <section className="display">
      <div className="display-bar">
        <span
          className={`display-state ${view?.state ?? 'none'}`}
          data-testid="display-state"
          data-state={view?.state ?? (url === undefined ? 'none' : 'connecting')}
          data-connects={view?.connects ?? 0}
          data-disconnects={view?.disconnects ?? 0}
        >
          {url === undefined ? (location === 'stopped' ? 'VM stopped: no display' : 'No display yet') : view?.state === 'connected' ? 'Display connected' : view?.state === 'disconnected' ? `Display lost: ${view.detail ?? ''}; reconnecting` : 'Connecting to the display…'}
        </span>
        {where && <span className="muted"> · {where}</span>}
        <span className="muted hint">Click the screen to type into the VM</span>
      </div>
      <div id="screen" ref={target} data-testid="screen" />
    </section>
  );
}
