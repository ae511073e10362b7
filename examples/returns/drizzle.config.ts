import { defineConfig } from 'drizzle-kit';

// The example's own migrations: `npx drizzle-kit generate --config examples/returns/drizzle.config.ts`
// after a change to its schema. They are applied by examples/returns/src/migrate.ts, never by the engine.
export default defineConfig({
  dialect: 'postgresql',
  schema: './examples/returns/src/schema.ts',
  out: './examples/returns/migrations',
});
