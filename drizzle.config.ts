import { defineConfig } from 'drizzle-kit';

// `npm run generate` writes a new engine migration after a change to src/store/schema.ts.
// Never reorder or edit a migration that has landed: generate a new one.
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/store/schema.ts',
  out: './src/store/migrations',
});
