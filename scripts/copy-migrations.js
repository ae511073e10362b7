// tsc copies no SQL: put the migrations next to the compiled store, where migrate.ts looks.
import { cpSync } from 'node:fs';

cpSync('src/store/migrations', 'dist/src/store/migrations', { recursive: true });
