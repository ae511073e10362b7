/** `reconciler config`: the effective configuration, secrets masked. */
import { ExitCode } from '../../errors.js';
import { loadConfig, redactedConfig } from '../../config.js';
import { printJson, table } from '../table.js';

export async function configCommand(flags: { json?: boolean }): Promise<number> {
  const shown = redactedConfig(loadConfig());
  if (flags.json) printJson(shown);
  else process.stdout.write(`${table(['VARIABLE', 'VALUE'], Object.entries(shown))}\n`);
  return ExitCode.ok;
}
