// Runs handlers one at a time. Stream callbacks re-enter: pushing a frame can synchronously deliver it to
// an in-process peer whose answer comes straight back into this side's write handler, in the middle of
// the code that pushed. A handler that arrives while another runs is queued and runs right after it, so
// each handler sees (and leaves) consistent state.
export class Serial {
  #busy = false;
  #queue: (() => void)[] = [];
  readonly #onError: (error: unknown) => void;

  constructor(onError: (error: unknown) => void) {
    this.#onError = onError;
  }

  run(handler: () => void): void {
    if (this.#busy) {
      this.#queue.push(handler);
      return;
    }
    this.#busy = true;
    try {
      for (let next: (() => void) | undefined = handler; next !== undefined; next = this.#queue.shift()) {
        try {
          next();
        } catch (error) {
          this.#onError(error);
        }
      }
    } finally {
      this.#busy = false;
    }
  }
}
