// Migration history in an embedded SQLite database (node:sqlite): one row per migration, the full
// record kept as JSON beside the columns people filter on.
import { DatabaseSync } from 'node:sqlite';
import { migrationRecordSchema, type MigrationRecord } from '../shared/migration.ts';

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
    `);
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
