import { formatHostPort } from '../config/values.js';

/** A bind failure as one line an operator can act on. */
export function listenError(name: string, host: string, port: number, err: NodeJS.ErrnoException): Error {
  const at = formatHostPort(host, port);
  switch (err.code) {
    case 'EADDRINUSE':
      return new Error(`listener "${name}": ${at} already in use`);
    case 'EACCES':
      return new Error(
        `listener "${name}": no permission to bind ${at} (ports below 1024 need CAP_NET_BIND_SERVICE)`,
      );
    case 'EADDRNOTAVAIL':
      return new Error(`listener "${name}": ${at} is not an address of this host`);
    default:
      return new Error(`listener "${name}": cannot bind ${at} (${err.code ?? err.message})`);
  }
}
