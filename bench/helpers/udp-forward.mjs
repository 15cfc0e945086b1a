// The minimal Node UDP forwarder, the yardstick for sluice's stream relay (`relay: stream`):
// `udp-forward.mjs PORT UPSTREAM_PORT` listens on 127.0.0.1:PORT, gives each client (address,
// port) its own socket connected to 127.0.0.1:UPSTREAM_PORT and sends replies back from the
// listening socket. No ACL, no metrics, no expiry. Prints {"port"} once listening.
import dgram from 'node:dgram';

const [portArg, upstreamArg] = process.argv.slice(2);
const upstreamPort = Number(upstreamArg);
const down = dgram.createSocket('udp4');
const flows = new Map();

function open(address, port) {
  const flow = { up: dgram.createSocket('udp4'), pending: [] };
  flow.up.on('error', () => undefined);
  flow.up.on('message', (reply) => down.send(reply, port, address));
  flow.up.connect(upstreamPort, '127.0.0.1', () => {
    for (const msg of flow.pending) flow.up.send(msg);
    flow.pending = undefined;
  });
  return flow;
}

down.on('message', (msg, rinfo) => {
  const key = `${rinfo.address}:${rinfo.port}`;
  let flow = flows.get(key);
  if (flow === undefined) flows.set(key, (flow = open(rinfo.address, rinfo.port)));
  if (flow.pending !== undefined) flow.pending.push(msg);
  else flow.up.send(msg);
});
down.on('error', () => undefined);
down.bind(Number(portArg), '127.0.0.1', () =>
  process.stdout.write(`${JSON.stringify({ port: Number(portArg) })}\n`),
);
