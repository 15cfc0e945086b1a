import { getSystemErrorName } from 'node:util';

/** The code for a positive errno from the relay ('ECONNRESET'); 'EIO' when unknown. */
export function errnoName(errno: number | undefined): string {
  if (errno === undefined || errno <= 0) return 'EIO';
  try {
    return getSystemErrorName(-errno);
  } catch {
    return 'EIO';
  }
}
