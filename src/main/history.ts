// History in an embedded SQLite database (node:sqlite): one row per migration, per interaction
// sample (a bounded window, for `snowbird trace record`) and per placement decision worth keeping
// (moves and changes of rule), the full record kept as JSON beside the columns people filter on.
import { DatabaseSync } from 'node:sqlite';
import { migrationRecordSchema, type MigrationRecord } from '../shared/migration.ts';
import { interactionSampleSchema, placementDecisionSchema, type InteractionSample, type PlacementDecision } from '../shared/placement.ts';

/** Samples older than this are pruned: traces are recorded live, the database is not an archive. */
const SAMPLE_RETENTION_MS = 2 * 60 * 60_000;

export interface DecisionRow {
  vm: string;
  decision: PlacementDecision;
}

export class History {
  private readonly db: DatabaseSync;

  constructor(file: string) {
    this.db = new DatabaseSync(file);
    this.db.exec(`
      PRAGMA journal_mode = WAL;
      CREATE TABLE IF NOT EXISTS migrations (
        migration_id TEXT PRIMARY KEY,
        vm TEXT NOT NULL,
        started_at TEXT NOT NULL,
        outcome TEXT NOT NULL,
        record TEXT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS migrations_vm ON migrations (vm, started_at);
      CREATE TABLE IF NOT EXISTS samples (vm TEXT NOT NULL, at REAL NOT NULL, sample TEXT NOT NULL);
      CREATE INDEX IF NOT EXISTS samples_vm ON samples (vm, at);
      CREATE TABLE IF NOT EXISTS decisions (vm TEXT NOT NULL, at REAL NOT NULL, decision TEXT NOT NULL);
      CREATE INDEX IF NOT EXISTS decisions_vm ON decisions (vm, at);
    `);
  }

  addSample(vm: string, sample: InteractionSample): void {
    this.db.prepare('INSERT INTO samples (vm, at, sample) VALUES (?, ?, ?)').run(vm, sample.at, JSON.stringify(sample));
  }

  /** Drops samples past the retention window (the placement loop calls it now and then). */
  pruneSamples(now = Date.now()): void {
    this.db.prepare('DELETE FROM samples WHERE at < ?').run(now - SAMPLE_RETENTION_MS);
  }

  /** Oldest first, taken strictly after `after` (ms since the epoch). */
  samples(vm: string, after: number, limit = 10_000): InteractionSample[] {
    const rows = this.db.prepare('SELECT sample FROM samples WHERE vm = ? AND at > ? ORDER BY at LIMIT ?').all(vm, after, limit) as { sample: string }[];
    return rows.flatMap((row) => {
      const parsed = interactionSampleSchema.safeParse(JSON.parse(row.sample));
      return parsed.success ? [parsed.data] : [];
    });
  }

  addDecision(vm: string, decision: PlacementDecision): void {
    this.db.prepare('INSERT INTO decisions (vm, at, decision) VALUES (?, ?, ?)').run(vm, decision.at, JSON.stringify(decision));
  }

  /** Newest first. */
  decisions(options: { vm?: string; limit?: number } = {}): DecisionRow[] {
    const limit = options.limit ?? 100;
    const rows = (options.vm === undefined
      ? this.db.prepare('SELECT vm, decision FROM decisions ORDER BY at DESC LIMIT ?').all(limit)
      : this.db.prepare('SELECT vm, decision FROM decisions WHERE vm = ? ORDER BY at DESC LIMIT ?').all(options.vm, limit)) as { vm: string; decision: string }[];
    return rows.flatMap((row) => {
      const parsed = placementDecisionSchema.safeParse(JSON.parse(row.decision));
      return parsed.success ? [{ vm: row.vm, decision: parsed.data }] : [];
    });
  }

  addMigration(record: MigrationRecord): void {
    this.db
      .prepare('INSERT OR REPLACE INTO migrations (migration_id, vm, started_at, outcome, record) VALUES (?, ?, ?, ?, ?)')
      .run(record.migrationId, record.vm, record.startedAt, record.outcome, JSON.stringify(record));
  }

  /** Newest first. Rows that no longer match the schema (an older version wrote them) are skipped. */
  migrations(options: { vm?: string; limit?: number } = {}): MigrationRecord[] {
    const limit = options.limit ?? 100;
    const rows = (options.vm === undefined
      ? this.db.prepare('SELECT record FROM migrations ORDER BY started_at DESC LIMIT ?').all(limit)
      : this.db.prepare('SELECT record FROM migrations WHERE vm = ? ORDER BY started_at DESC LIMIT ?').all(options.vm, limit)) as { record: string }[];
    return rows.flatMap((row) => {
      const parsed = migrationRecordSchema.safeParse(JSON.parse(row.record));
      return parsed.success ? [parsed.data] : [];
    });
  }

  close(): void {
    this.db.close();
  }
}
