/** console.css: a plain, high-contrast page for a tired operator; dark when the system is. No web fonts, no external resource. */
export const consoleCss = String.raw`:root {
  --bg: #fbfbfa; --fg: #1b1b1b; --muted: #5f6368; --line: #d9d9d6; --panel: #ffffff; --link: #0b57d0;
  --ok: #146c2e; --ok-bg: #e6f4ea; --warn: #8a4b00; --warn-bg: #fff4d6; --bad: #b3261e; --bad-bg: #fce8e6; --info: #0b57d0; --info-bg: #e8f0fe;
  --found: #8ab4f8; --failed: #d93025; --max: #c3c7cf; --avg: #5f6368;
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #161718; --fg: #e8eaed; --muted: #a0a4aa; --line: #3c4043; --panel: #1f2022; --link: #8ab4f8;
    --ok: #81c995; --ok-bg: #1e3526; --warn: #fdd663; --warn-bg: #3a2f12; --bad: #f28b82; --bad-bg: #3d1f1d; --info: #8ab4f8; --info-bg: #1c2b44;
    --found: #4b6fae; --failed: #f28b82; --max: #5f6368; --avg: #c3c7cf;
  }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
a { color: var(--link); }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.92em; }
header.top { display: flex; justify-content: space-between; align-items: center; gap: 1rem; padding: 0.6rem 1.2rem; border-bottom: 1px solid var(--line); background: var(--panel); }
header.top nav a { margin-right: 1rem; }
header.top .brand { font-weight: 700; text-decoration: none; color: var(--fg); }
main { padding: 0.5rem 1.2rem 3rem; max-width: 110rem; }
main.narrow { max-width: 32rem; }
h1 { font-size: 1.5rem; margin: 0.8rem 0 0.4rem; }
h1.key code { font-size: 1.2rem; overflow-wrap: anywhere; }
h2 { font-size: 1.15rem; margin: 1.4rem 0 0.5rem; }
h3 { font-size: 1rem; margin: 1rem 0 0.4rem; }
.lead { font-size: 1.05rem; }
.muted { color: var(--muted); }
.live { margin: 0.3rem 1.2rem 0; font-size: 0.85rem; }
.live.lost { color: var(--bad); font-weight: 600; }
.flash { margin: 0.6rem 1.2rem 0; padding: 0.5rem 0.8rem; border-radius: 4px; }
.flash-ok { background: var(--ok-bg); color: var(--ok); }
.flash-bad { background: var(--bad-bg); color: var(--bad); }
.ok { color: var(--ok); }
.warn { color: var(--warn); }
.bad { color: var(--bad); }
.attention ul { padding-left: 1.2rem; }
.attention li { margin: 0.3rem 0; }
.attention li.bad, .attention li.warn { color: var(--fg); }
.attention li.bad::marker { color: var(--bad); }
.attention li.warn::marker { color: var(--warn); }
table { border-collapse: collapse; width: 100%; background: var(--panel); }
th, td { text-align: left; vertical-align: top; padding: 0.4rem 0.6rem; border-bottom: 1px solid var(--line); }
thead th { font-size: 0.85rem; color: var(--muted); font-weight: 600; border-bottom: 2px solid var(--line); }
tr.trouble-3 th[scope=row] { border-left: 4px solid var(--bad); }
tr.trouble-2 th[scope=row] { border-left: 4px solid var(--bad); }
tr.trouble-1 th[scope=row] { border-left: 4px solid var(--warn); }
tr.selected { background: var(--info-bg); }
.num { font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 0 0.45rem; border-radius: 0.7rem; font-size: 0.82rem; font-weight: 600; }
.badge-ok { background: var(--ok-bg); color: var(--ok); }
.badge-warn { background: var(--warn-bg); color: var(--warn); }
.badge-bad { background: var(--bad-bg); color: var(--bad); }
.badge-info { background: var(--info-bg); color: var(--info); }
.badge-plain { border: 1px solid var(--line); }
.counts { font-size: 0.85rem; color: var(--muted); }
.error-line { color: var(--bad); font-size: 0.88rem; overflow-wrap: anywhere; }
pre.error { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; color: var(--bad); }
pre.error.full { padding: 0.7rem; background: var(--panel); border: 1px solid var(--line); border-radius: 4px; max-height: 30rem; overflow: auto; }
td.note { white-space: pre-wrap; overflow-wrap: anywhere; }
ul.plain { list-style: none; padding: 0; margin: 0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 0.3rem 1rem; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
.actions { display: flex; flex-wrap: wrap; gap: 0.4rem; margin: 0.4rem 0; }
form.inline { display: inline; }
form.actions input[name=note] { min-width: 18rem; }
td form.actions input[name=note] { min-width: 12rem; flex: 1 1 100%; }
form.manual { max-width: 40rem; padding: 0.6rem 0.8rem; margin: 0.5rem 0; border: 1px solid var(--line); border-radius: 4px; background: var(--panel); }
form.manual textarea { display: block; width: 100%; margin: 0.3rem 0 0.5rem; }
form.filters { display: flex; flex-wrap: wrap; gap: 0.8rem; align-items: center; margin: 0.4rem 0 0.6rem; }
label { font-size: 0.9rem; }
input, select, textarea, button { font: inherit; color: inherit; background: var(--bg); border: 1px solid var(--line); border-radius: 4px; padding: 0.25rem 0.5rem; }
#signin input[type=password] { display: block; width: 100%; margin: 0.3rem 0 0.8rem; }
button { cursor: pointer; background: var(--panel); }
button:hover { border-color: var(--link); }
button.danger { color: var(--bad); }
button.link { border: none; background: none; color: var(--link); text-decoration: underline; padding: 0 0.3rem; }
.access { margin: 0.4rem 0; }
.crumbs { margin: 0.6rem 0 0; font-size: 0.9rem; }
.charts { display: flex; flex-wrap: wrap; gap: 1.5rem; }
.chart-row h3 { margin-bottom: 0.2rem; }
figure.chart { margin: 0; }
figure.chart figcaption { font-size: 0.82rem; color: var(--muted); }
figure.chart svg { max-width: 100%; height: auto; display: block; }
.chart-found { fill: var(--found); }
.chart-failed { fill: var(--failed); }
.chart-max { fill: var(--max); }
.chart-avg { fill: var(--avg); }
.chart-none { fill: var(--line); }
.chart-axis { stroke: var(--line); }
.chart-label { fill: var(--muted); font-size: 9px; font-family: system-ui, sans-serif; }
`;
