// The demo's reconciler is the returns example's (examples/returns/README.md): this file points at
// it, so that `npx reconciler list` and `npx reconciler run settle-returns` in this repository
// show the demo. Delete it (and add your own files here), or set JOBS_DIR to your own folder.
export { default } from '../examples/returns/jobs/settle-returns.js';
