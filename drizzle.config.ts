import { defineConfig } from 'drizzle-kit';

// `npm run generate` writes a new migration after a schema change. Never reorder or edit
// a migration that has landed: generate a new one.
export default defineConfig({
  dialect: 'postgresql',
  schema: ['./src/store/schema.ts', './src/returns/schema.ts'],
  out: './src/store/migrations',
});
