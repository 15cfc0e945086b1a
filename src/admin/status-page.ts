import type { ListenerJson, PoolJson } from './api.js';
import type { Sample } from '../telemetry/history.js';

function esc(s: string | number): string {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The page's script: it refreshes the tables and charts in place from the JSON API. */
const SCRIPT = `
const esc=(s)=>String(s).replace(/[&<>"']/g,(c)=>'&#'+c.charCodeAt(0)+';');
const row=(cells)=>'<tr>'+cells.map((c)=>'<td'+(c.cls?' class="'+esc(c.cls)+'"':'')+'>'+esc(c.v)+'</td>').join('')+'</tr>';
function listeners(ls){return ls.map((l)=>row([{v:l.name},{v:l.protocol},{v:l.bind},{v:l.pool},{v:l.open}])).join('');}
function pool(p){return '<h2>Pool '+esc(p.name)+' <small>'+esc(p.algorithm)+'</small></h2><table class="pool"><thead><tr><th>backend</th><th>state</th><th>weight</th><th>health</th><th>local</th><th>cluster</th></tr></thead><tbody>'+p.backends.map((b)=>row([{v:b.address},{v:b.state,cls:b.state},{v:b.effective_weight+'/'+b.weight},{v:b.health.readiness},{v:b.connections.local},{v:b.connections.cluster}])).join('')+'</tbody></table>';}
function chart(id,points,unit){
  const el=document.getElementById(id);if(!el)return;
  if(points.length<2){el.innerHTML='<div class="now">collecting samples (one every 5 s)</div>';return;}
  const w=360,h=90,max=Math.max(1,...points.map((p)=>p.v));
  const xs=(i)=>points.length<2?0:i*(w/(points.length-1));
  const d=points.map((p,i)=>(i?'L':'M')+xs(i).toFixed(1)+' '+(h-(p.v/max)*(h-4)).toFixed(1)).join(' ');
  const last=points.length?points[points.length-1].v:0;
  el.innerHTML='<svg viewBox="0 0 '+w+' '+h+'" width="'+w+'" height="'+h+'"><path d="'+d+'" fill="none" stroke="#1a73e8" stroke-width="2"/></svg><div class="now">'+esc(last.toFixed(1))+' '+unit+' (max '+esc(max.toFixed(1))+')</div>';
}
function rates(samples,key,scale){const out=[];for(let i=1;i<samples.length;i++){const dt=(samples[i].t-samples[i-1].t)/1000;out.push({t:samples[i].t,v:dt>0?(samples[i][key]-samples[i-1][key])/dt/scale:0});}return out;}
async function refresh(){
  try{
    const [p,l,h]=await Promise.all(['/api/v1/pools','/api/v1/listeners','/api/v1/history'].map((u)=>fetch(u).then((r)=>r.json())));
    document.getElementById('pools').innerHTML=p.pools.map(pool).join('');
    document.querySelector('#listeners tbody').innerHTML=listeners(l.listeners);
    chart('conn-chart',rates(h.samples,'connections',1),'connections/s');
    chart('bytes-chart',rates(h.samples,'bytes',125000),'Mbit/s');
    document.getElementById('updated').textContent='updated '+new Date().toLocaleTimeString();
  }catch(e){document.getElementById('updated').textContent='cannot reach the admin API';}
}
refresh();setInterval(refresh,2000);
`;

/**
 * The status page for people: one self-contained HTML document (nothing fetched from outside),
 * rendered on the server and then refreshed in place every 2 s from the JSON API, with charts of
 * the connection rate and throughput over the last minutes.
 */
export function renderStatusPage(
  pools: readonly PoolJson[],
  listeners: readonly ListenerJson[],
  history: readonly Sample[],
): string {
  const listenerRows = listeners
    .map(
      (l) =>
        `<tr><td>${esc(l.name)}</td><td>${esc(l.protocol)}</td><td>${esc(l.bind)}</td><td>${esc(l.pool)}</td><td>${esc(l.open)}</td></tr>`,
    )
    .join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sluice status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#1d232a;background:#fafbfc}
h1{font-size:1.4rem;margin:0}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}small{color:#5f6368;font-weight:400}
table{border-collapse:collapse;background:#fff;min-width:40rem}th,td{padding:.35rem .8rem;border-bottom:1px solid #e3e6ea;text-align:left}
th{background:#f0f2f5;font-weight:600}.up{color:#137333}.down{color:#b3261e}.draining{color:#b06000}.disabled{color:#5f6368}
.charts{display:flex;gap:2rem;flex-wrap:wrap}.chart{background:#fff;border:1px solid #e3e6ea;padding:.5rem 1rem}.now{color:#5f6368}
</style></head><body>
<h1>sluice <small id="updated"></small></h1>
<div class="charts">
<div class="chart"><h2>Connection rate</h2><div id="conn-chart"></div></div>
<div class="chart"><h2>Throughput</h2><div id="bytes-chart"></div></div>
</div>
<h2>Listeners</h2>
<table id="listeners"><thead><tr><th>name</th><th>protocol</th><th>bind</th><th>pool</th><th>open</th></tr></thead><tbody>${listenerRows}</tbody></table>
<div id="pools">${pools.map(renderPool).join('')}</div>
<script>window.__initialSamples=${JSON.stringify(history.length)};${SCRIPT}</script>
</body></html>`;
}

function renderPool(p: PoolJson): string {
  const rows = p.backends
    .map(
      (b) =>
        `<tr><td>${esc(b.address)}</td><td class="${esc(b.state)}">${esc(b.state)}</td><td>${esc(b.effective_weight)}/${esc(b.weight)}</td><td>${esc(b.health.readiness)}</td><td>${esc(b.connections.local)}</td><td>${esc(b.connections.cluster)}</td></tr>`,
    )
    .join('');
  const panic = p.panic ? ' <small class="down">panic: balancing over every backend</small>' : '';
  return `<h2>Pool ${esc(p.name)} <small>${esc(p.algorithm)}</small>${panic}</h2><table class="pool"><thead><tr><th>backend</th><th>state</th><th>weight</th><th>health</th><th>local</th><th>cluster</th></tr></thead><tbody>${rows}</tbody></table>`;
}
