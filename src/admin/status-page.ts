import type { PoolJson } from './api.js';

export interface ListenerRow {
  name: string;
  protocol: string;
  bind: string;
  pool: string;
  sessions: number;
}

function esc(s: string | number): string {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * The status page for people: one self-contained HTML document (no external fetches), rendered
 * on the server and refreshed in place from /api/v1/pools.
 */
export function renderStatusPage(pools: readonly PoolJson[], listeners: readonly ListenerRow[]): string {
  const listenerRows = listeners
    .map(
      (l) =>
        `<tr><td>${esc(l.name)}</td><td>${esc(l.protocol)}</td><td>${esc(l.bind)}</td><td>${esc(l.pool)}</td><td>${esc(l.sessions)}</td></tr>`,
    )
    .join('');
  const poolBlocks = pools.map((p) => renderPool(p)).join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sluice status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#1d232a;background:#fafbfc}
h1{font-size:1.4rem;margin:0 0 1rem}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
table{border-collapse:collapse;background:#fff;min-width:40rem}th,td{padding:.35rem .8rem;border-bottom:1px solid #e3e6ea;text-align:left}
th{background:#f0f2f5;font-weight:600}.up{color:#137333}.down{color:#b3261e}.draining{color:#b06000}.disabled{color:#5f6368}
</style></head><body>
<h1>sluice</h1>
<h2>Listeners</h2>
<table id="listeners"><thead><tr><th>name</th><th>protocol</th><th>bind</th><th>pool</th><th>open sessions</th></tr></thead><tbody>${listenerRows}</tbody></table>
<div id="pools">${poolBlocks}</div>
<script>
const esc=(s)=>String(s).replace(/[&<>"']/g,(c)=>'&#'+c.charCodeAt(0)+';');
function pool(p){return '<h2>Pool '+esc(p.name)+' <small>('+esc(p.algorithm)+')</small></h2><table class="pool"><thead><tr><th>backend</th><th>state</th><th>weight</th><th>health</th><th>local</th><th>cluster</th></tr></thead><tbody>'+p.backends.map((b)=>'<tr class="backend"><td>'+esc(b.address)+'</td><td class="'+esc(b.state)+'">'+esc(b.state)+'</td><td>'+esc(b.effective_weight)+'/'+esc(b.weight)+'</td><td>'+esc(b.health.readiness)+'</td><td>'+esc(b.connections.local)+'</td><td>'+esc(b.connections.cluster)+'</td></tr>').join('')+'</tbody></table>';}
async function refresh(){try{const r=await fetch('/api/v1/pools');const j=await r.json();document.getElementById('pools').innerHTML=j.pools.map(pool).join('');}catch{}}
setInterval(refresh,2000);
</script>
</body></html>`;
}

function renderPool(p: PoolJson): string {
  const rows = p.backends
    .map(
      (b) =>
        `<tr class="backend"><td>${esc(b.address)}</td><td class="${esc(b.state)}">${esc(b.state)}</td><td>${esc(b.effective_weight)}/${esc(b.weight)}</td><td>${esc(b.health.readiness)}</td><td>${esc(b.connections.local)}</td><td>${esc(b.connections.cluster)}</td></tr>`,
    )
    .join('');
  return `<h2>Pool ${esc(p.name)} <small>(${esc(p.algorithm)})</small></h2><table class="pool"><thead><tr><th>backend</th><th>state</th><th>weight</th><th>health</th><th>local</th><th>cluster</th></tr></thead><tbody>${rows}</tbody></table>`;
}
