// Preloaded into a daemon by the bench (`NODE_OPTIONS=--import …`): counts every query any pg
// client of the process sends and writes the count to BENCH_QUERY_COUNT_FILE twice a second.
// A measuring probe only; the daemon's code is unchanged.
import { writeFileSync } from 'node:fs';
import pg from 'pg';

let sent = 0;
const query = pg.Client.prototype.query;
pg.Client.prototype.query = function countedQuery(...args) {
  sent++;
  return query.apply(this, args);
};
const file = process.env.BENCH_QUERY_COUNT_FILE;
if (file) setInterval(() => writeFileSync(file, String(sent)), 500).unref();
