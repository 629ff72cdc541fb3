// The migration orchestrator's public API, for the site agent.
export { migrateVm, type MigrateVmInput } from './source.ts';
export { MigrationDestination, DestinationError, type DestinationOptions, type IncomingVm } from './destination.ts';
export { recoverMigration, readSourceJournal, type RecoverMigrationInput, type RecoveryResult } from './recover.ts';
export { readIncomingJournals, sourceJournalPath } from './journal.ts';
export {
  MigrationError,
  DEFAULT_TIMEOUTS,
  DEFAULT_DOWNTIME_LIMIT_MS,
  DEFAULT_MAX_CHAIN_DEPTH,
  PHASES,
  type FailureOutcome,
  type MemoryStrategy,
  type MigrationOptions,
  type MigrationPhase,
  type MigrationProgress,
  type MigrationResult,
  type MigrationTimeouts,
  type QemuMigrationStats,
} from './common/types.ts';
export { decideRecovery, type SourceJournal, type IncomingJournal, type JournalStep } from './common/journal.ts';
