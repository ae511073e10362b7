/** `reconciler config`: the effective configuration, secrets masked. */
import { ExitCode } from '../../errors.js';
import { deprecationWarnings, loadConfig, redactedConfig } from '../../config.js';
import { printJson, table } from '../table.js';

export async function configCommand(flags: { json?: boolean }): Promise<number> {
  const shown = redactedConfig(loadConfig());
  for (const warning of deprecationWarnings()) process.stderr.write(`reconciler: warning: ${warning}\n`);
  if (flags.json) printJson(shown);
  else process.stdout.write(`${table(['VARIABLE', 'VALUE'], Object.entries(shown))}\n`);
  return ExitCode.ok;
}
