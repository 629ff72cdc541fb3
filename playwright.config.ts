// The app's end-to-end tests (e2e/): Playwright's runner with Debian's Chromium (`npx playwright
// install` cannot download browsers on these machines), one worker (each spec runs two agents and
// QEMU guests under TCG on two cores), traces and screenshots kept for failed tests in
// test-results/e2e/ (also of the pages a serial describe shares: they come from the `browser`
// fixture), and a JSON report that `npm test` counts.
import { defineConfig } from '@playwright/test';

export default defineConfig({
  testDir: 'e2e',
  testMatch: '*.spec.ts',
  workers: 1,
  fullyParallel: false,
  retries: 0,
  // One test may move a busy VM twice; hooks boot guests.
  timeout: 10 * 60_000,
  outputDir: 'test-results/e2e',
  reporter: [['list'], ['json', { outputFile: 'test-results/e2e/results.json' }]],
  use: {
    launchOptions: {
      executablePath: '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    },
    viewport: { width: 1400, height: 1000 },
    // A locator that finds nothing fails within a minute instead of holding the test to its timeout.
    actionTimeout: 60_000,
    trace: 'retain-on-failure',
    screenshot: 'only-on-failure',
  },
});
