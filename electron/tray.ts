// The tray icon: a dot coloured by where the chosen VM is (green on the laptop, blue in the cloud,
// amber while moving, grey otherwise), a tooltip that says it in words, and a menu to pick the VM
// and bring the window forward. Plus a native notification whenever a VM changes site.
import { Menu, Notification, Tray, nativeImage, type NativeImage } from 'electron';
import type { AgentStatus } from '../src/shared/local-api.ts';
import { MoveWatcher, locationOf, moveNotice, trayTooltip, type VmLocation } from './locations.ts';

const ICON_SIZE = 16;
/** RGB per location; `undefined` (not connected, no VM) is grey too. */
const COLOURS: Record<VmLocation, [number, number, number]> = {
  edge: [46, 157, 87],
  core: [59, 125, 216],
  moving: [224, 160, 32],
  stopped: [140, 140, 140],
};

/** A filled, anti-aliased dot, drawn here so the shell ships no image files. */
function dotIcon([r, g, b]: [number, number, number]): NativeImage {
  const pixels = Buffer.alloc(ICON_SIZE * ICON_SIZE * 4);
  const centre = (ICON_SIZE - 1) / 2;
  const radius = ICON_SIZE / 2 - 1;
  for (let y = 0; y < ICON_SIZE; y++) {
    for (let x = 0; x < ICON_SIZE; x++) {
      const coverage = Math.min(1, Math.max(0, radius + 0.5 - Math.hypot(x - centre, y - centre)));
      const at = (y * ICON_SIZE + x) * 4;
      // createFromBitmap takes premultiplied BGRA.
      pixels[at] = Math.round(b * coverage);
      pixels[at + 1] = Math.round(g * coverage);
      pixels[at + 2] = Math.round(r * coverage);
      pixels[at + 3] = Math.round(255 * coverage);
    }
  }
  return nativeImage.createFromBitmap(pixels, { width: ICON_SIZE, height: ICON_SIZE });
}

export class LocationTray {
  readonly #tray: Tray;
  readonly #showWindow: () => void;
  readonly #moves = new MoveWatcher();
  #status: AgentStatus | undefined;
  #connectionDetail: string | undefined;
  /** The VM the tray follows: the user's pick in its menu, else the first (as the page selects). */
  #chosen: string | undefined;
  #menuKey = '';

  constructor(showWindow: () => void) {
    this.#showWindow = showWindow;
    this.#tray = new Tray(dotIcon(COLOURS.stopped));
    this.#tray.on('click', () => showWindow());
    this.#render();
  }

  /** The agent's connection: without it the tray says why and shows no VM. */
  connection(open: boolean, detail?: string): void {
    if (!open) this.#status = undefined;
    this.#connectionDetail = detail;
    this.#render();
  }

  status(status: AgentStatus): void {
    this.#status = status;
    for (const move of this.#moves.observe(status)) {
      if (Notification.isSupported()) new Notification(moveNotice(move)).show();
    }
    this.#render();
  }

  destroy(): void {
    this.#tray.destroy();
  }

  #vm(): string | undefined {
    const names = this.#status?.vms.map((v) => v.name) ?? [];
    return this.#chosen !== undefined && names.includes(this.#chosen) ? this.#chosen : names[0];
  }

  #render(): void {
    const vm = this.#vm();
    const location = this.#status !== undefined && vm !== undefined ? locationOf(this.#status, vm) : undefined;
    const tooltip = trayTooltip(this.#status, vm, this.#connectionDetail);
    this.#tray.setImage(dotIcon(COLOURS[location ?? 'stopped']));
    this.#tray.setToolTip(tooltip);
    // macOS shows a title beside the icon; elsewhere this is a no-op.
    this.#tray.setTitle(vm !== undefined && location !== undefined ? `${vm}: ${location}` : '');
    // The menu is rebuilt only when its entries change (it would close under the user's pointer otherwise).
    const names = this.#status?.vms.map((v) => v.name) ?? [];
    const menuKey = JSON.stringify([names, vm]);
    if (menuKey === this.#menuKey) return;
    this.#menuKey = menuKey;
    this.#tray.setContextMenu(Menu.buildFromTemplate([
      { label: 'Show snowbird', click: () => this.#showWindow() },
      { type: 'separator' },
      ...names.map((name) => ({
        label: name,
        type: 'radio' as const,
        checked: name === vm,
        click: () => {
          this.#chosen = name;
          this.#render();
        },
      })),
      ...(names.length > 0 ? [{ type: 'separator' as const }] : []),
      { label: 'Quit', role: 'quit' as const },
    ]));
  }
}
