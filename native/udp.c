/* UDP: a listener socket read in batches, a connected upstream socket per client flow. */
#include "relay.h"

/* Tells JavaScript of a datagram from a client with no flow (port < 0: a receive error, -errno). */
static void call_datagram(instance *in, int l, const char *ip, int port, const char *data, size_t len) {
  int ints[2] = {l, port};
  invoke(in, in->on_datagram, 2, ints, ip, len > 0 ? data : "", len);
}

static void call_udp_event(instance *in, int id, int kind) {
  int ints[2] = {id, kind};
  invoke(in, in->on_udp, 2, ints, NULL, NULL, 0);
}

/*
 * The Source Connection ID of a long-header QUIC packet (RFC 8999: first octet, version, DCID
 * length and DCID, SCID length and SCID); its length, or -1 when `p` is not a long header that
 * holds one of at most QUIC_CID_MAX octets.
 */
static int quic_scid(const uint8_t *p, size_t len, const uint8_t **scid) {
  if (len < 7 || (p[0] & 0x80) == 0) return -1;
  size_t at = 6 + (size_t)p[5]; /* the SCID length octet */
  if (at >= len) return -1;
  size_t n = p[at];
  if (n == 0 || n > QUIC_CID_MAX || at + 1 + n > len) return -1;
  *scid = p + at + 1;
  return (int)n;
}

/* Reports the new server connection IDs among replies [0, n); 0, or -1 when the flow ended. */
static int report_server_cids(instance *in, udp_flow *f, int n) {
  int id = f->id;
  uint32_t gen = in->flows.gens[id];
  for (int i = 0; i < n; i++) {
    const uint8_t *scid;
    int len = quic_scid((const uint8_t *)in->riov[i].iov_base, in->rmsgs[i].msg_len, &scid);
    if (len < 0 || (len == f->scid_len && memcmp(scid, f->scid, (size_t)len) == 0)) continue;
    f->scid_len = (uint8_t)len;
    memcpy(f->scid, scid, (size_t)len);
    int ints[2] = {id, UDP_SERVER_CID};
    invoke(in, in->on_udp, 2, ints, NULL, (const char *)scid, (size_t)len);
    if (in->flows.items[id] != f || in->flows.gens[id] != gen) return -1;
  }
  return 0;
}

void make_ukey(ukey *k, int l, const struct sockaddr_storage *ss) {
  memset(k, 0, sizeof *k);
  k->listener = (uint16_t)l;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    k->family = AF_INET;
    k->port = a->sin_port;
    memcpy(k->addr, &a->sin_addr, 4);
  } else {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    k->family = AF_INET6;
    k->port = a->sin6_port;
    memcpy(k->addr, &a->sin6_addr, 16);
  }
}

static uint32_t ukey_hash(const ukey *k) {
  /* FNV-1a over the key bytes (padding is zeroed by make_ukey). */
  const uint8_t *p = (const uint8_t *)k;
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 16777619u;
  return h;
}

/* The flow of a client, or NULL. The table holds flow id + 1 (0 = empty), linear probing. */
static udp_flow *flow_find(instance *in, const ukey *k) {
  if (in->ucap == 0) return NULL;
  uint32_t mask = (uint32_t)in->ucap - 1;
  for (uint32_t i = ukey_hash(k) & mask;; i = (i + 1) & mask) {
    int v = in->utable[i];
    if (v == 0) return NULL;
    udp_flow *f = in->flows.items[v - 1];
    if (f != NULL && memcmp(&f->key, k, sizeof *k) == 0) return f;
  }
}

static int flow_table_grow(instance *in) {
  int cap = in->ucap == 0 ? 1024 : in->ucap * 2;
  int *old = in->utable;
  int oldcap = in->ucap;
  in->utable = calloc((size_t)cap, sizeof(int));
  if (in->utable == NULL) {
    in->utable = old;
    return -1;
  }
  in->ucap = cap;
  in->uused = 0;
  for (int i = 0; i < oldcap; i++)
    if (old[i] != 0) flow_table_put(in, in->flows.items[old[i] - 1]);
  free(old);
  return 0;
}

int flow_table_put(instance *in, udp_flow *f) {
  if ((in->uused + 1) * 2 > in->ucap && flow_table_grow(in) < 0) return -1;
  uint32_t mask = (uint32_t)in->ucap - 1;
  uint32_t i = ukey_hash(&f->key) & mask;
  while (in->utable[i] != 0) i = (i + 1) & mask;
  in->utable[i] = f->id + 1;
  in->uused++;
  return 0;
}

/* Removes a flow from the table (backward-shift deletion keeps probe chains whole). */
static void flow_table_remove(instance *in, udp_flow *f) {
  uint32_t mask = (uint32_t)in->ucap - 1;
  uint32_t i = ukey_hash(&f->key) & mask;
  while (in->utable[i] != f->id + 1) {
    if (in->utable[i] == 0) return;
    i = (i + 1) & mask;
  }
  in->utable[i] = 0;
  in->uused--;
  for (uint32_t j = (i + 1) & mask; in->utable[j] != 0; j = (j + 1) & mask) {
    int v = in->utable[j];
    uint32_t home = ukey_hash(&((udp_flow *)in->flows.items[v - 1])->key) & mask;
    /* Move v back into the hole if its home slot is not in (i, j]. */
    if (((j - home) & mask) >= ((j - i) & mask)) {
      in->utable[i] = v;
      in->utable[j] = 0;
      i = j;
    }
  }
}

void flow_free(instance *in, udp_flow *f) {
  flow_table_remove(in, f);
  close(f->fd); /* leaves the epoll set with it */
  free(f->header);
  id_release(&in->flows, f->id);
  if (--in->flows_open == 0) update_ref(in);
  free(f);
}

/* Sends datagrams [0, k) of the send batch to the flow's backend. */
static void flow_flush(instance *in, udp_flow *f, int k) {
  int cnt = 0;
  for (int j = 0; j < k; j++) {
    size_t len = in->siov[j][1].iov_len;
    if (len + f->header_len > f->max_payload) {
      f->drop_size++;
      continue;
    }
    struct msghdr *m = &in->smsgs[cnt].msg_hdr;
    memset(m, 0, sizeof *m);
    if (f->header_len > 0) {
      in->siov[cnt][0].iov_base = f->header;
      in->siov[cnt][0].iov_len = f->header_len;
      in->siov[cnt][1] = in->siov[j][1];
      m->msg_iov = in->siov[cnt];
      m->msg_iovlen = 2;
    } else {
      in->siov[cnt][1] = in->siov[j][1];
      m->msg_iov = &in->siov[cnt][1];
      m->msg_iovlen = 1;
    }
    cnt++;
  }
  int sent = 0;
  while (sent < cnt) {
    int r = sendmmsg(f->fd, in->smsgs + sent, (unsigned)(cnt - sent), MSG_DONTWAIT);
    if (r > 0) {
      for (int j = sent; j < sent + r; j++) {
        f->dg_in++;
        f->bytes_in += in->smsgs[j].msg_len - f->header_len;
      }
      f->credits += (uint64_t)f->max_replies * (uint64_t)r;
      sent += r;
    } else if (errno == EINTR) {
      continue;
    } else {
      /* Full buffers (EAGAIN, ENOBUFS) or a stale ICMP error (ECONNREFUSED): this batch is lost;
       * a refusal shows again on the reply side, where it is reported. */
      f->drop_full += (uint64_t)(cnt - sent);
      break;
    }
  }
}

/* Points the receive batch at the shared buffers; with `named`, sources are recorded too. */
static void prepare_receive(instance *in, int named) {
  for (int i = 0; i < UDP_BATCH; i++) {
    in->riov[i].iov_base = in->rbuf + (size_t)i * UDP_MAX;
    in->riov[i].iov_len = UDP_MAX;
    struct msghdr *m = &in->rmsgs[i].msg_hdr;
    memset(m, 0, sizeof *m);
    if (named) {
      m->msg_name = &in->raddr[i];
      m->msg_namelen = sizeof in->raddr[i];
    }
    m->msg_iov = &in->riov[i];
    m->msg_iovlen = 1;
  }
}

void on_udp_listener(instance *in, int l) {
  for (int round = 0; round < 4; round++) {
    watched *ul = &in->ulisteners.e[l];
    if (ul->fd < 0) return;
    uint32_t lgen = ul->gen;
    prepare_receive(in, 1);
    int n = recvmmsg(ul->fd, in->rmsgs, UDP_BATCH, MSG_DONTWAIT, NULL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      call_datagram(in, l, "", -errno, NULL, 0);
      return;
    }
    udp_flow *cur = NULL;
    int k = 0;
    for (int i = 0; i < n; i++) {
      ukey key;
      make_ukey(&key, l, &in->raddr[i]);
      udp_flow *f = flow_find(in, &key);
      if (f != NULL) {
        if (f != cur) {
          if (cur != NULL) flow_flush(in, cur, k);
          cur = f;
          k = 0;
        }
        in->siov[k][1].iov_base = in->riov[i].iov_base;
        in->siov[k][1].iov_len = in->rmsgs[i].msg_len;
        k++;
        continue;
      }
      if (cur != NULL) flow_flush(in, cur, k);
      cur = NULL;
      k = 0;
      char ip[INET6_ADDRSTRLEN];
      int port = format_addr(&in->raddr[i], ip, sizeof ip);
      /* JavaScript decides; udpFlow() called from there files the flow under this source. */
      in->src = &in->raddr[i];
      in->src_len = in->rmsgs[i].msg_hdr.msg_namelen;
      in->src_listener = l;
      call_datagram(in, l, ip, port, in->riov[i].iov_base, in->rmsgs[i].msg_len);
      in->src = NULL;
      if (ul->fd < 0 || ul->gen != lgen) return; /* the listener closed meanwhile */
    }
    if (cur != NULL) flow_flush(in, cur, k);
    if (n < UDP_BATCH) return;
  }
}

/* Replies from a flow's backend go back to its client through the listener's socket. */
void on_udp_flow(instance *in, udp_flow *f) {
  int id = f->id;
  uint32_t gen = in->flows.gens[id];
  for (int round = 0; round < 4; round++) {
    prepare_receive(in, 0);
    int n = recvmmsg(f->fd, in->rmsgs, UDP_BATCH, MSG_DONTWAIT, NULL);
    if (n < 0) {
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) return;
      if (err == ECONNREFUSED) {
        f->answered = 0;
        call_udp_event(in, id, UDP_REFUSED); /* may close the flow */
      }
      return;
    }
    watched *ul = &in->ulisteners.e[f->listener];
    if (ul->fd < 0) return;
    int got = n;
    if (f->max_replies > 0 && (uint64_t)n > f->credits) {
      /* More replies than the client's datagrams allow (amplification): the rest are dropped. */
      n = (int)f->credits;
      f->drop_amp += (uint64_t)(got - n);
    }
    f->credits -= f->max_replies > 0 ? (uint64_t)n : 0;
    for (int i = 0; i < n; i++) {
      struct msghdr *m = &in->smsgs[i].msg_hdr;
      memset(m, 0, sizeof *m);
      m->msg_name = &f->client;
      m->msg_namelen = f->client_len;
      in->siov[i][1].iov_base = in->riov[i].iov_base;
      in->siov[i][1].iov_len = in->rmsgs[i].msg_len;
      m->msg_iov = &in->siov[i][1];
      m->msg_iovlen = 1;
    }
    int sent = 0;
    while (sent < n) {
      int r = sendmmsg(ul->fd, in->smsgs + sent, (unsigned)(n - sent), MSG_DONTWAIT);
      if (r > 0) {
        for (int j = sent; j < sent + r; j++) {
          f->dg_out++;
          f->bytes_out += in->smsgs[j].msg_len;
        }
        sent += r;
      } else if (errno == EINTR) {
        continue;
      } else {
        f->drop_full += (uint64_t)(n - sent);
        break;
      }
    }
    /* Long-header replies only: a short header costs one bit test per reply. */
    if (f->quic && report_server_cids(in, f, got) < 0) return;
    if (!f->answered) {
      f->answered = 1;
      call_udp_event(in, id, UDP_ANSWERED);
      if (in->flows.items[id] != f || in->flows.gens[id] != gen) return;
    }
    if (got < UDP_BATCH) return;
  }
}
