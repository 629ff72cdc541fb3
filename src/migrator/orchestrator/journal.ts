// Durable journal files: written with fsync (file and folder) at every step, so an agent that
// restarts finds where each migration stood.
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileDurable } from '../layers/store.ts';
import { IncomingJournalSchema, SourceJournalSchema, type IncomingJournal, type SourceJournal } from './common/journal.ts';

export const SOURCE_JOURNAL_FILE = 'migration.json';

export function sourceJournalPath(vmDir: string): string {
  return join(vmDir, SOURCE_JOURNAL_FILE);
}

export function incomingJournalPath(vmDir: string, migrationId: string): string {
  return join(vmDir, `incoming-${migrationId}.json`);
}

export class JournalError extends Error {
  override readonly name = 'JournalError';
}

export async function writeSourceJournal(vmDir: string, journal: SourceJournal): Promise<void> {
  const valid = SourceJournalSchema.parse({ ...journal, updatedAt: new Date().toISOString() });
  await writeFileDurable(sourceJournalPath(vmDir), `${JSON.stringify(valid, null, 2)}\n`);
}

export async function writeIncomingJournal(vmDir: string, journal: IncomingJournal): Promise<void> {
  const valid = IncomingJournalSchema.parse({ ...journal, updatedAt: new Date().toISOString() });
  await writeFileDurable(incomingJournalPath(vmDir, journal.migrationId), `${JSON.stringify(valid, null, 2)}\n`);
}

async function readJson(file: string): Promise<unknown> {
  let raw: string;
  try {
    raw = await readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  try {
    return JSON.parse(raw);
  } catch (cause) {
    throw new JournalError(`${file} is not valid JSON: ${(cause as Error).message}`);
  }
}

/** The source journal of the VM in `vmDir`, if a migration of it was under way. */
export async function readSourceJournal(vmDir: string): Promise<SourceJournal | undefined> {
  const file = sourceJournalPath(vmDir);
  const json = await readJson(file);
  if (json === undefined) return undefined;
  const parsed = SourceJournalSchema.safeParse(json);
  if (!parsed.success) throw new JournalError(`${file} is not a valid migration journal: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

/** Incoming-migration journals of every VM folder under `vmsDir`. */
export async function readIncomingJournals(vmsDir: string): Promise<IncomingJournal[]> {
  const found: IncomingJournal[] = [];
  let vms: string[];
  try {
    vms = await readdir(vmsDir);
  } catch {
    return found;
  }
  for (const vm of vms) {
    let names: string[];
    try {
      names = await readdir(join(vmsDir, vm));
    } catch {
      continue;
    }
    for (const name of names) {
      if (!/^incoming-[a-z0-9-]+\.json$/.test(name)) continue;
      const parsed = IncomingJournalSchema.safeParse(await readJson(join(vmsDir, vm, name)));
      if (parsed.success) found.push(parsed.data);
    }
  }
  return found;
}

export async function removeFile(file: string): Promise<void> {
  await rm(file, { force: true });
}
