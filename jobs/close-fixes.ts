// The returns example's second reconciler (examples/returns/README.md, "close-fixes"): this file points
// at it, so that the demo (`npm start`) runs it beside settle-returns, and `npx reconciler run close-fixes`
// in this repository shows it. Delete it (and add your own files here), or set JOBS_DIR to your own folder.
export { default } from '../examples/returns/jobs/close-fixes.js';
