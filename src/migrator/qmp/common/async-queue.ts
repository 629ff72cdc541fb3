// A bounded push queue read as an async iterator: the producer (the QMP socket) never waits for a slow
// consumer, and a consumer that falls too far behind gets an error instead of silently losing items.

export interface AsyncQueueOptions {
  /** Most items held for the consumer; one more fails the queue. */
  limit: number;
  /** Builds the error the consumer sees after draining what was queued before the overflow. */
  overflowError: (limit: number) => Error;
  /** Called once when the queue stops accepting items (ended, failed or returned by the consumer). */
  onDone?: () => void;
}

type State = { kind: 'open' } | { kind: 'ended' } | { kind: 'failed'; error: Error };

export class AsyncQueue<T> implements AsyncIterableIterator<T, undefined> {
  readonly #options: AsyncQueueOptions;
  #items: T[] = [];
  /** Consumers waiting in next(); only non-empty while #items is empty. */
  #waiters: PromiseWithResolvers<IteratorResult<T, undefined>>[] = [];
  #state: State = { kind: 'open' };

  constructor(options: AsyncQueueOptions) {
    this.#options = options;
  }

  push(item: T): void {
    if (this.#state.kind !== 'open') return;
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve({ done: false, value: item });
    else if (this.#items.length < this.#options.limit) this.#items.push(item);
    else this.fail(this.#options.overflowError(this.#options.limit));
  }

  /** No more items; the consumer still drains what is queued. */
  end(): void {
    if (!this.#finish({ kind: 'ended' })) return;
    for (const waiter of this.#waiters.splice(0)) waiter.resolve({ done: true, value: undefined });
  }

  /** The consumer drains what is queued, then gets `error` once, then done. */
  fail(error: Error): void {
    if (!this.#finish({ kind: 'failed', error })) return;
    const waiters = this.#waiters.splice(0);
    const first = waiters.shift();
    if (first) {
      this.#state = { kind: 'ended' };
      first.reject(error);
    }
    for (const waiter of waiters) waiter.resolve({ done: true, value: undefined });
  }

  next(): Promise<IteratorResult<T, undefined>> {
    if (this.#items.length > 0) return Promise.resolve({ done: false, value: this.#items.shift() as T });
    switch (this.#state.kind) {
      case 'open': {
        const waiter = Promise.withResolvers<IteratorResult<T, undefined>>();
        this.#waiters.push(waiter);
        return waiter.promise;
      }
      case 'ended':
        return Promise.resolve({ done: true, value: undefined });
      case 'failed': {
        const { error } = this.#state;
        this.#state = { kind: 'ended' };
        return Promise.reject(error);
      }
    }
  }

  /** The consumer is done (e.g. `break` out of for-await): drop queued items. */
  return(): Promise<IteratorResult<T, undefined>> {
    this.#items = [];
    this.end();
    this.#state = { kind: 'ended' };
    return Promise.resolve({ done: true, value: undefined });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  #finish(state: State): boolean {
    if (this.#state.kind !== 'open') return false;
    this.#state = state;
    this.#options.onDone?.();
    return true;
  }
}
