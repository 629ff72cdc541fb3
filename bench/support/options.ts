// Command-line options of the benchmarks: node:util's parseArgs, with a usage error that names the
// benchmark and exits 2.
import { parseArgs, type ParseArgsConfig } from 'node:util';

export function usageError(bench: string, message: string): never {
  process.stderr.write(`${bench}: ${message} (see --help)\n`);
  process.exit(2);
}

export function parseBenchOptions<const T extends NonNullable<ParseArgsConfig['options']>>(bench: string, options: T) {
  try {
    return parseArgs({ options }).values;
  } catch (error) {
    return usageError(bench, (error as Error).message);
  }
}
