import dgram from 'node:dgram';
import net from 'node:net';
import type { ListenerConfig } from '../config/schema.js';
import { listenError } from '../listener/bind-error.js';

function probeOne(l: ListenerConfig): Promise<void> {
  const { host, port } = l.bind;
  return new Promise((resolve, reject) => {
    const fail = (err: NodeJS.ErrnoException): void => reject(listenError(l.name, host, port, err));
    if (l.protocol === 'udp') {
      const s = dgram.createSocket({ type: net.isIP(host) === 6 ? 'udp6' : 'udp4' });
      s.once('error', fail);
      s.bind({ address: host, port, exclusive: true }, () => s.close(() => resolve()));
      return;
    }
    const s = net.createServer();
    s.once('error', fail);
    s.listen({ host, port }, () => s.close(() => resolve()));
  });
}

/**
 * Binds every listener address once without SO_REUSEPORT, then lets go, before any worker
 * starts. Workers bind with SO_REUSEPORT, which the kernel also grants to any other process of
 * the same user that asks for it: without this check a second sluice (or a stale one) on the
 * same ports would silently share them instead of failing with "already in use". It also turns
 * EACCES on a privileged port into one clear line before N workers each hit it. Rejects with the
 * listener's one-line bind error.
 */
export async function probeListeners(listeners: readonly ListenerConfig[]): Promise<void> {
  for (const l of listeners) await probeOne(l);
}
