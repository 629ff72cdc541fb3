// Live migration under TCG on QEMU 7.2 (the CI machines: nested KVM does not work) intermittently
// delivers stale guest pages at the destination: the demo guest's memory checker then reports
// thousands of violations. It is not understood yet (docs/architecture.md, "Known limits"), so the
// migration suites run only when asked for, with SNOWBIRD_MIGRATION_TESTS=1, or under KVM.
export const migrationSuiteSkip: string | false = process.env['SNOWBIRD_MIGRATION_TESTS'] === '1'
  ? false
  : 'live migration under TCG (QEMU 7.2) intermittently loses guest memory pages here — unresolved, see docs/architecture.md "Known limits"; run with SNOWBIRD_MIGRATION_TESTS=1';
