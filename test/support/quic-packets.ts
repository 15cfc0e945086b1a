/** QUIC-shaped datagrams for tests: the RFC 8999 invariant headers and a payload, nothing else. */

const QUIC_V1 = Buffer.from([0, 0, 0, 1]);

/** A long-header packet (first octet 0xc0: a v1 Initial) with these connection IDs and a payload. */
export function longPacket(dcid: Buffer, scid: Buffer = Buffer.alloc(0), payload = ''): Buffer {
  return Buffer.concat([
    Buffer.from([0xc0]),
    QUIC_V1,
    Buffer.from([dcid.length]),
    dcid,
    Buffer.from([scid.length]),
    scid,
    Buffer.from(payload),
  ]);
}

/** A short-header packet (first octet 0x40) to this connection ID, with a payload. */
export function shortPacket(dcid: Buffer, payload = ''): Buffer {
  return Buffer.concat([Buffer.from([0x40]), dcid, Buffer.from(payload)]);
}
