/** The console's static assets, kept as TypeScript modules so that they ship in dist/ with the code (no copy step). */
import { consoleCss } from './console-css.js';
import { consoleJs } from './console-js.js';

const ASSETS: Record<string, { contentType: string; body: string }> = {
  '/assets/console.css': { contentType: 'text/css; charset=utf-8', body: consoleCss },
  '/assets/console.js': { contentType: 'text/javascript; charset=utf-8', body: consoleJs },
};

export function assetFor(path: string): { contentType: string; body: string } | undefined {
  return Object.hasOwn(ASSETS, path) ? ASSETS[path] : undefined;
}
