// For the e2e specs' pages shared by a serial describe (the `page` fixture is per test): a trace and
// a full-page screenshot of each failed test, kept in its output folder (test-results/e2e/…).
import { test, type Page } from '@playwright/test';

const tracing = new WeakSet<Page>();

export function keepOnFailure(getPage: () => Page | undefined): void {
  test.beforeEach(async () => {
    const page = getPage();
    if (page === undefined || page.isClosed()) return;
    if (!tracing.has(page)) {
      await page.context().tracing.start({ screenshots: true, snapshots: true });
      tracing.add(page);
    }
    await page.context().tracing.startChunk();
  });
  // Playwright reads the fixtures a hook wants from its first parameter's pattern: this one wants none.
  // eslint-disable-next-line no-empty-pattern
  test.afterEach(async ({}, testInfo) => {
    const page = getPage();
    if (page === undefined || page.isClosed() || !tracing.has(page)) return;
    const failed = testInfo.status !== testInfo.expectedStatus;
    await page.context().tracing.stopChunk(failed ? { path: testInfo.outputPath('trace.zip') } : {});
    if (failed) await page.screenshot({ path: testInfo.outputPath('failure.png'), fullPage: true }).catch(() => undefined);
  });
}
