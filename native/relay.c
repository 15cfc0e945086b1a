/*
 * sluice splice relay: accepts and connects TCP sessions and moves their bytes between the two
 * sockets inside the kernel (splice(2) through a pipe), so no byte crosses into JavaScript and
 * no Buffer is allocated per read.
 *
 * The sockets are watched by one epoll set of the relay's own, itself watched by the Node.js event
 * loop (uv_poll on the epoll descriptor). A session's two sockets are registered once each,
 * edge-triggered, for input, output and the peer's FIN (EPOLLRDHUP), and leave the set when they
 * are closed: no epoll_ctl call while a session runs. Edge-triggered means every wake-up must be
 * worked off: a direction reads until its source is drained (a short read), its destination is
 * full (then the destination's next output edge resumes it), or its budget for this turn is spent
 * (then the relay goes on a pending list that the loop's next turn continues; see `pending`).
 *
 * It also accepts connections for listeners JavaScript bound (listen(fd): the relay keeps its own
 * copy of the listening socket, with TCP_NODELAY set once on it so every accepted socket inherits
 * it), so a session that needs no preface never gets a net.Socket at all. When out of descriptors
 * it sheds the pending connection with a spare one, as libuv does.
 *
 * UDP goes the same way: the relay reads a bound UDP socket in batches (recvmmsg), sends the
 * datagrams of known clients straight to their flow's connected upstream socket (sendmmsg, with
 * the flow's PROXY v2 header in front when it has one) and replies back from the listener's
 * socket; a datagram from a new client goes to JavaScript, which runs its checks and creates the
 * flow (udpFlow) while the relay holds that datagram. Flows keep counters JavaScript reads for
 * expiry and metrics, and report refusals (ICMP port unreachable) and answers after them.
 *
 * A relay's life, driven from JavaScript through its handle (slot and generation in one number,
 * so a handle kept after its relay ended can never reach the relay that took the slot next):
 *   connect(ip, port, clientFd?, prefix?)  opens the upstream socket (non-blocking, TCP_NODELAY).
 *                            With a client descriptor the relay attaches it as soon as the
 *                            upstream connects and starts relaying, `prefix` (a PROXY header)
 *                            first: JavaScript hears nothing until the end. Without one it
 *                            reports CONNECTED and waits for attach() or detach();
 *   attach(h, fd, prefix, own)  takes the client's socket (dup'ed unless `own`) and starts
 *                            relaying, `prefix` (a PROXY header, bytes read during the preface)
 *                            first;
 *   detach(h)                gives a connected upstream socket back (JavaScript relays it itself);
 *   abort(h)                 closes everything now, no report (timeouts, drains, shutdown);
 *   info(h)                  state and counters for idle and half-closed timeouts and metrics.
 * What happens to relays (CONNECTED, CONNECT_FAILED, ENDED with its final counters) and to
 * listeners (ACCEPTED) is queued as records and handed to JavaScript in one call per loop turn,
 * not one call per event.
 *
 * While relaying, a direction is read only while nothing it read waits for its destination (at
 * most one pipe, or one copy buffer, in flight per direction; the sender held back by TCP). FIN is
 * forwarded with shutdown(SHUT_WR) once everything read has been delivered (half-close each way),
 * in the same segment as the last bytes when the FIN was already queued behind them (MSG_MORE);
 * the FIN of the direction that finishes last is sent by close(). The relay ends when both
 * directions have finished, or at the first error on either socket. Pipes come from a per-process
 * pool and are held only while bytes are in flight, so an idle session holds none.
 *
 * Everything runs on the event loop's thread. Epoll events carry the slot and a generation
 * number, so an event for a relay that ended earlier in the same batch is recognised and dropped.
 * close() is the one system call whose result is not checked: the descriptor is gone either way.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

/* Pipe size (F_SETPIPE_SZ) and bytes asked of the source per splice. */
#define PIPE_SIZE (256 * 1024)
static size_t chunk = 64 * 1024; /* raised to PIPE_SIZE when the kernel allows it */
#define CHUNK chunk
/* Reads below this size are copied (recv/send through one shared buffer); a direction whose read
 * fills it switches to splice for the rest of the session. */
#define COPY_SIZE (16 * 1024)
static char copy_buf[COPY_SIZE];
/* Reads per direction per turn before yielding to the rest of the loop (the relay then goes on
 * the pending list). */
#define ROUNDS 16
/* Empty pipes kept for reuse; more are closed when released. */
#define POOL_MAX 256
/* Epoll events taken per epoll_wait call. */
#define BATCH 128
/* Records handed to JavaScript per call (the mailbox Float64Array holds MAIL_RECS × REC_LEN). */
#define MAIL_RECS 256
#define REC_LEN 8

#define DOWN 0 /* the client's socket */
#define UP 1   /* the backend's socket */

/* Records for JavaScript (the first number of each). */
enum { REC_ACCEPTED = 1, REC_CONNECTED = 2, REC_CONNECT_FAILED = 3, REC_ENDED = 4 };
enum { ST_CONNECTING = 1, ST_CONNECTED = 2, ST_RELAYING = 3 };

/* A handle is generation × HANDLE_SLOTS + slot: below 2^52, exact in a JavaScript number. */
#define HANDLE_SLOT_BITS 24
#define HANDLE_SLOTS (1 << HANDLE_SLOT_BITS)
#define HANDLE_GEN_MASK ((1u << 28) - 1)

typedef struct instance instance;

/*
 * Items by a small integer id (what JavaScript holds), with a generation per id so that an
 * epoll event of an item that ended is told from one of the item that took its id next.
 */
typedef struct {
  void **items; /* NULL when free */
  uint32_t *gens;
  int *free; /* free ids, lowest on top */
  int n, nfree;
  /* Ids of items that ended with a record still on its way to JavaScript: not reused until it is
   * handed over, and `outcome` says what became of the client (OUTCOME_*) if asked meanwhile. */
  uint8_t *outcome;
  int *retired;
  int nretired;
} id_table;

/* What became of the client's descriptor when a relay ended (abort() answers it). */
enum { OUTCOME_NONE = 0, OUTCOME_CLIENT_KEPT = 1, OUTCOME_CLIENT_CLOSED = 2 };

typedef struct {
  int r, w; /* -1 when no pipe is held */
  size_t fill;
  uint64_t bytes; /* read from the source, owed or delivered to the destination */
  char *prefix; /* bytes owed to the destination: the prefix, or what it could not take */
  size_t prefix_len, prefix_off;
  int spliced; /* bulk seen: this direction splices from now on */
  int rdhup;   /* the source reported its peer's FIN: a short read has drained it */
  int eof;     /* the source's FIN has been read */
  int shut;    /* FIN forwarded (or left to close(): the other direction had finished) */
  int blocked; /* waiting for the destination's next output edge */
  int more;    /* stopped with bytes waiting (budget spent): continue on the pending list */
} direction;

typedef struct relay relay;
struct relay {
  instance *inst;
  int slot;
  int state;
  int fd[2]; /* -1 when not open */
  int registered[2];
  int client_fd; /* connect(…, clientFd): attached once the upstream connects; JavaScript's until then */
  direction d[2]; /* d[DOWN]: client -> backend; d[UP]: backend -> client */
  int first_fin;  /* -1, DOWN or UP */
  int err_side;   /* -1, DOWN or UP */
  int err_no;
  int pending; /* on the pending list */
  relay *next_pending;
};

/* A socket JavaScript bound that the relay reads: a TCP listener (accept) or a UDP listener. */
typedef struct {
  int fd; /* the relay's copy; -1 when the entry is free */
  uint32_t gen;
} watched;

#define MAX_WATCHED 1024
typedef struct {
  watched e[MAX_WATCHED];
  int n;        /* entries ever used */
  int64_t open; /* entries in use */
} watch_table;

/* A record waiting for JavaScript, and the client address of an ACCEPTED one. */
typedef struct {
  double v[REC_LEN];
  char ip[INET6_ADDRSTRLEN];
} record;

/* ---- UDP types ---- */
#define UDP_BATCH 32
#define UDP_MAX (64 * 1024)
/* What the UDP callback is told about a flow. */
enum { UDP_REFUSED = 1, UDP_ANSWERED = 2 };

/* A flow's key: the listener and the client's address and port (padding zeroed). */
typedef struct {
  uint16_t listener;
  uint16_t family;
  uint16_t port;
  uint8_t addr[16];
} ukey;

typedef struct {
  int id;
  int listener;
  int fd; /* connected to the backend */
  ukey key;
  struct sockaddr_storage client;
  socklen_t client_len;
  char *header; /* PROXY v2 header sent before every payload */
  size_t header_len;
  size_t max_payload;
  uint64_t dg_in, bytes_in, dg_out, bytes_out, drop_size, drop_full;
  int answered;
} udp_flow;

/* Connections accepted per wake-up of one listening socket before yielding. */
#define ACCEPTS 64
/* Event keys: generation << 32 | kind << 30 | index << 1 | side. */
#define KIND_SHIFT 30
enum { KIND_RELAY = 0, KIND_ACCEPTOR = 1, KIND_UDP_LISTENER = 2, KIND_UDP_FLOW = 3 };
#define KEY(gen, kind, index, side)                                                                 \
  (((uint64_t)(gen) << 32) | ((uint64_t)(kind) << KIND_SHIFT) | ((uint64_t)(index) << 1) | (uint64_t)(side))

struct instance {
  napi_env env;
  watch_table acceptors;
  int reserve_fd; /* spare descriptor, given up to shed a connection when out of descriptors */
  napi_ref on_batch;
  napi_ref on_datagram;
  napi_ref on_udp;
  /* UDP listeners and flows */
  watch_table ulisteners;
  id_table flows; /* udp_flow * */
  int64_t flows_open;
  int *utable; /* flow id + 1 by client key; 0 = empty */
  int ucap, uused;
  /* batch buffers, allocated on the first UDP listener */
  char *rbuf;
  struct mmsghdr rmsgs[UDP_BATCH], smsgs[UDP_BATCH];
  struct iovec riov[UDP_BATCH], siov[UDP_BATCH][2];
  struct sockaddr_storage raddr[UDP_BATCH];
  /* the source of the datagram JavaScript is deciding on (udpFlow files the flow under it) */
  struct sockaddr_storage *src;
  socklen_t src_len;
  int src_listener;
  uv_loop_t *loop;
  int epfd;
  uv_poll_t epoll_watch;
  /* Runs the next loop turn while records wait or relays are pending (see kick). */
  uv_idle_t later;
  int later_on;
  napi_ref stats_ref;
  double *stats;
  napi_ref mail_ref;
  double *mail; /* MAIL_RECS × REC_LEN, shared with JavaScript */
  record *queue; /* records not yet handed over */
  int qn, qcap;
  int dispatching; /* JavaScript is reading the mailbox: no nested hand-over */
  relay *pending;  /* relays that stopped with bytes waiting */
  napi_async_context async;
  id_table relays; /* relay * */
  int pool[POOL_MAX][2];
  int pool_n;
  int64_t pipes_open;
  int64_t relays_open;
};

/* stats layout shared with JavaScript (a Float64Array given to init): info() and abort() fill it. */
enum { S_BYTES_UP, S_BYTES_DOWN, S_FIRST_FIN, S_ERR_SIDE, S_ERR_NO, S_STATE };
/* Its length: UDP flows report six counters (js_udp_info); two spare. */
#define STATS_LEN 8

/* Takes a free id for `item` (growing the table as needed); -1 when out of memory or ids. */
static int id_take(id_table *t, void *item) {
  if (t->nfree == 0) {
    if (t->n >= HANDLE_SLOTS) return -1;
    int n = t->n == 0 ? 1024 : t->n * 2;
    void **items = realloc(t->items, sizeof(void *) * (size_t)n);
    if (items == NULL) return -1;
    t->items = items;
    uint32_t *gens = realloc(t->gens, sizeof(uint32_t) * (size_t)n);
    if (gens == NULL) return -1;
    t->gens = gens;
    int *free_ids = realloc(t->free, sizeof(int) * (size_t)n);
    if (free_ids == NULL) return -1;
    t->free = free_ids;
    uint8_t *outcome = realloc(t->outcome, (size_t)n);
    if (outcome == NULL) return -1;
    t->outcome = outcome;
    int *retired = realloc(t->retired, sizeof(int) * (size_t)n);
    if (retired == NULL) return -1;
    t->retired = retired;
    for (int i = t->n; i < n; i++) {
      items[i] = NULL;
      gens[i] = 0;
      outcome[i] = OUTCOME_NONE;
    }
    /* Lowest ids on top, so ids stay small. */
    for (int i = n - 1; i >= t->n; i--) t->free[t->nfree++] = i;
    t->n = n;
  }
  int id = t->free[--t->nfree];
  t->items[id] = item;
  return id;
}

static void id_release(id_table *t, int id) {
  t->items[id] = NULL;
  t->gens[id]++;
  t->free[t->nfree++] = id;
}

/* Ends an item whose last record is queued: its events are dropped from now on (generation), but
 * its id waits for release_retired(), so the record cannot be taken for one of the next item. */
static void id_retire(id_table *t, int id, int outcome) {
  t->items[id] = NULL;
  t->gens[id]++;
  t->outcome[id] = (uint8_t)outcome;
  t->retired[t->nretired++] = id;
}

/* Every queued record has been handed over: retired ids may be taken again. */
static void release_retired(id_table *t) {
  for (int k = 0; k < t->nretired; k++) {
    int id = t->retired[k];
    t->outcome[id] = OUTCOME_NONE;
    t->free[t->nfree++] = id;
  }
  t->nretired = 0;
}

static double handle_of(relay *r) {
  return (double)(r->inst->relays.gens[r->slot] & HANDLE_GEN_MASK) * HANDLE_SLOTS + r->slot;
}

/* The outcome of the relay a handle named when it ended with its record still queued, else NONE. */
static int retired_outcome(instance *in, int64_t h) {
  if (h < 0) return OUTCOME_NONE;
  int64_t slot = h & (HANDLE_SLOTS - 1);
  uint32_t gen = (uint32_t)(h >> HANDLE_SLOT_BITS);
  if (slot >= in->relays.n || in->relays.items[slot] != NULL) return OUTCOME_NONE;
  if (((in->relays.gens[slot] - 1) & HANDLE_GEN_MASK) != gen) return OUTCOME_NONE;
  return in->relays.outcome[slot];
}

/* The relay a handle names, or NULL when it has ended (whatever now holds its slot). */
static relay *relay_of(instance *in, int64_t h) {
  if (h < 0) return NULL;
  int64_t slot = h & (HANDLE_SLOTS - 1);
  uint32_t gen = (uint32_t)(h >> HANDLE_SLOT_BITS);
  if (slot >= in->relays.n || (in->relays.gens[slot] & HANDLE_GEN_MASK) != gen) return NULL;
  return in->relays.items[slot];
}

static int pipe_take(instance *in, direction *d) {
  if (in->pool_n > 0) {
    in->pool_n--;
    d->r = in->pool[in->pool_n][0];
    d->w = in->pool[in->pool_n][1];
    return 0;
  }
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return errno;
  d->r = fds[0];
  d->w = fds[1];
  in->pipes_open++;
  /* A smaller pipe still works (splices take what fits): only the chunk size depends on it. */
  if (fcntl(fds[1], F_SETPIPE_SZ, PIPE_SIZE) >= PIPE_SIZE) chunk = PIPE_SIZE;
  return 0;
}

/* Gives the direction's pipe back: to the pool when empty, closed when it still holds bytes. */
static void pipe_release(instance *in, direction *d) {
  if (d->r < 0) return;
  if (d->fill == 0 && in->pool_n < POOL_MAX) {
    in->pool[in->pool_n][0] = d->r;
    in->pool[in->pool_n][1] = d->w;
    in->pool_n++;
  } else {
    close(d->r);
    close(d->w);
    in->pipes_open--;
  }
  d->r = d->w = -1;
  d->fill = 0;
}

static void write_stats(relay *r) {
  double *s = r->inst->stats;
  s[S_BYTES_UP] = (double)r->d[DOWN].bytes;
  s[S_BYTES_DOWN] = (double)r->d[UP].bytes;
  s[S_FIRST_FIN] = r->first_fin;
  s[S_ERR_SIDE] = r->err_side;
  s[S_ERR_NO] = r->err_no;
  s[S_STATE] = r->state;
}

/* Watches one side for input, output and the peer's FIN, edge-triggered, until it is closed. */
static int watch_side(relay *r, int s) {
  struct epoll_event ev = {
      .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
      .data.u64 = KEY(r->inst->relays.gens[r->slot], KIND_RELAY, r->slot, s),
  };
  if (epoll_ctl(r->inst->epfd, EPOLL_CTL_ADD, r->fd[s], &ev) < 0) return errno;
  r->registered[s] = 1;
  return 0;
}

/* Takes one side out of the set while its descriptor stays open (given back, or still shared). */
static int unwatch_side(relay *r, int s) {
  if (!r->registered[s]) return 0;
  r->registered[s] = 0;
  if (epoll_ctl(r->inst->epfd, EPOLL_CTL_DEL, r->fd[s], NULL) < 0) return errno;
  return 0;
}

static void on_later(uv_idle_t *h);

/* Makes sure the loop's next turn comes round soon for queued records or pending relays. */
static void kick(instance *in) {
  if (in->later_on) return;
  if (uv_idle_start(&in->later, on_later) == 0) in->later_on = 1;
}

/* Keeps the process alive while relays or acceptors are open, as their sockets would. */
static void update_ref(instance *in) {
  if (in->relays_open + in->acceptors.open + in->ulisteners.open + in->flows_open > 0)
    uv_ref((uv_handle_t *)&in->epoll_watch);
  else
    uv_unref((uv_handle_t *)&in->epoll_watch);
}

static void unpend(relay *r) {
  if (!r->pending) return;
  for (relay **p = &r->inst->pending; *p != NULL; p = &(*p)->next_pending) {
    if (*p == r) {
      *p = r->next_pending;
      break;
    }
  }
  r->pending = 0;
  r->next_pending = NULL;
}

/*
 * Frees the relay; closes its descriptors (which takes them out of the epoll set). With an
 * outcome (OUTCOME_*), its final record is queued: the slot is retired until it is handed over.
 */
static void teardown(relay *r, int outcome) {
  instance *in = r->inst;
  unpend(r);
  for (int s = 0; s < 2; s++) {
    if (r->fd[s] >= 0) close(r->fd[s]);
    pipe_release(in, &r->d[s]);
  }
  free(r->d[DOWN].prefix);
  free(r->d[UP].prefix);
  if (outcome == OUTCOME_NONE) id_release(&in->relays, r->slot);
  else id_retire(&in->relays, r->slot, outcome);
  if (--in->relays_open == 0) update_ref(in);
  free(r);
}

/* Queues a record for JavaScript; the loop hands the queue over at the end of this turn. */
static record *push_record(instance *in, int kind) {
  if (in->qn == in->qcap) {
    int cap = in->qcap == 0 ? 64 : in->qcap * 2;
    record *q = realloc(in->queue, sizeof(record) * (size_t)cap);
    if (q == NULL) return NULL;
    in->queue = q;
    in->qcap = cap;
  }
  record *rec = &in->queue[in->qn++];
  memset(rec->v, 0, sizeof rec->v);
  rec->v[0] = kind;
  rec->ip[0] = 0;
  kick(in);
  return rec;
}
/*
 * Calls a JavaScript callback from the loop with up to four arguments: int32 numbers, then
 * optionally a latin1 string and a Buffer copy (ip, data: NULL for none). napi_make_callback
 * wants an object as `this`, and drains the microtask and tick queues; a throw is the process's
 * uncaught exception, as from any other callback.
 */
static void invoke(instance *in, napi_ref ref, int nints, const int *ints, const char *ip, const char *data,
                   size_t len) {
  napi_env env = in->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn, recv, argv[4], result;
  size_t argc = 0;
  bool ok = napi_get_reference_value(env, ref, &fn) == napi_ok && napi_get_global(env, &recv) == napi_ok;
  for (int i = 0; ok && i < nints; i++) ok = napi_create_int32(env, ints[i], &argv[argc++]) == napi_ok;
  if (ok && ip != NULL) ok = napi_create_string_latin1(env, ip, NAPI_AUTO_LENGTH, &argv[argc++]) == napi_ok;
  void *copy;
  if (ok && data != NULL) ok = napi_create_buffer_copy(env, len, data, &copy, &argv[argc++]) == napi_ok;
  if (ok) {
    napi_make_callback(env, in->async, recv, fn, argc, argv, &result);
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value err;
      napi_get_and_clear_last_exception(env, &err);
      napi_fatal_exception(env, err);
    }
  }
  napi_close_handle_scope(env, scope);
}

/* Writes a socket address as text and its port; "" and 0 for other families. */
static int format_addr(const struct sockaddr_storage *ss, char *ip, size_t size) {
  ip[0] = 0;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &a->sin_addr, ip, (socklen_t)size);
    return ntohs(a->sin_port);
  }
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    /* An IPv4 client of a dual-stack socket is written as IPv4 (1.2.3.4, not ::ffff:1.2.3.4). */
    if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr))
      inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], ip, (socklen_t)size);
    else
      inet_ntop(AF_INET6, &a->sin6_addr, ip, (socklen_t)size);
    return ntohs(a->sin6_port);
  }
  return 0;
}

/* Parses an IP literal and port; the largest payload of a datagram to it; -1 when not an IP. */
static int parse_addr(const char *ip, int port, struct sockaddr_storage *ss, socklen_t *len, size_t *max_payload) {
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    *len = sizeof *a4;
    *max_payload = 65507; /* 65,535 - 8 UDP - 20 IP */
    return 0;
  }
  if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    *len = sizeof *a6;
    *max_payload = 65527; /* 65,535 - 8 UDP */
    return 0;
  }
  return -1;
}


/* ---- TCP: the relay of one session ---- */

static void fail(relay *r, int side, int err) {
  if (r->err_side < 0) {
    r->err_side = side;
    r->err_no = err;
  }
}

/* The relay ended on its own: queue its final counters for JavaScript and tear it down. */
static void finish(relay *r) {
  record *rec = push_record(r->inst, REC_ENDED);
  if (rec != NULL) {
    rec->v[1] = handle_of(r);
    rec->v[2] = (double)r->d[DOWN].bytes;
    rec->v[3] = (double)r->d[UP].bytes;
    rec->v[4] = r->first_fin;
    rec->v[5] = r->err_side;
    rec->v[6] = r->err_no;
    rec->v[7] = r->fd[DOWN] >= 0; /* the client was attached: the relay closes it */
  }
  teardown(r, r->fd[DOWN] >= 0 ? OUTCOME_CLIENT_CLOSED : OUTCOME_CLIENT_KEPT);
}

/*
 * Direction i read its source's FIN and delivered everything before it: forward the FIN. When
 * the other direction has finished already, close() (the relay ends now) sends it: one system
 * call less, and no unread byte is left on either socket, so the close is a FIN, not a reset.
 */
static int end_direction(relay *r, int i) {
  direction *d = &r->d[i];
  pipe_release(r->inst, d);
  if (!r->d[1 - i].shut && shutdown(r->fd[1 - i], SHUT_WR) < 0 && errno != ENOTCONN) {
    /* ENOTCONN: the destination is already closed for good; its error shows on its next read. */
    fail(r, 1 - i, errno);
    return -1;
  }
  d->shut = 1;
  if (r->first_fin < 0) r->first_fin = i;
  return 0;
}

/* Sends owed bytes (prefix, or what the destination could not take). 1 when all went, 0 when the
 * destination is full, -1 on an error. */
static int send_owed(relay *r, int i) {
  direction *d = &r->d[i];
  int dst = r->fd[1 - i];
  while (d->prefix_off < d->prefix_len) {
    ssize_t n = send(dst, d->prefix + d->prefix_off, d->prefix_len - d->prefix_off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      d->prefix_off += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      d->blocked = 1;
      return 0;
    } else {
      fail(r, 1 - i, n < 0 ? errno : EPIPE);
      return -1;
    }
  }
  free(d->prefix);
  d->prefix = NULL;
  d->prefix_len = d->prefix_off = 0;
  return 1;
}

/* Delivers what the pipe holds. 1 when it is empty, 0 when the destination is full, -1 on error. */
static int drain_pipe(relay *r, int i, int last) {
  direction *d = &r->d[i];
  while (d->fill > 0) {
    unsigned flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK | (last ? SPLICE_F_MORE : 0);
    ssize_t n = splice(d->r, NULL, r->fd[1 - i], NULL, d->fill, flags);
    if (n > 0) {
      d->fill -= (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      d->blocked = 1;
      return 0;
    } else {
      fail(r, 1 - i, n < 0 ? errno : EPIPE);
      return -1;
    }
  }
  return 1;
}

/* Copy mode: one recv and one send. 1 to go on reading, 0 to stop (drained or blocked), -1 error. */
static int copy_once(relay *r, int i) {
  direction *d = &r->d[i];
  ssize_t n = recv(r->fd[i], copy_buf, COPY_SIZE, 0);
  if (n == 0) {
    d->eof = 1;
    return 1;
  }
  if (n < 0) {
    if (errno == EINTR) return 1;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    fail(r, i, errno);
    return -1;
  }
  d->bytes += (uint64_t)n;
  /* A short read after the peer's FIN was reported: the FIN is next, so send the bytes corked
   * and let the FIN go out in the same segment (one wake-up for the receiver, not two). */
  int drained = n < COPY_SIZE;
  if (drained && d->rdhup) d->eof = 1;
  ssize_t m = send(r->fd[1 - i], copy_buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT | (d->eof ? MSG_MORE : 0));
  if (m < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    fail(r, 1 - i, errno);
    return -1;
  }
  if (m < 0) m = 0;
  if (m < n) {
    /* The destination is full: keep the rest (at most COPY_SIZE) until its next output edge. */
    d->prefix = malloc((size_t)(n - m));
    if (d->prefix == NULL) {
      fail(r, i, ENOMEM);
      return -1;
    }
    memcpy(d->prefix, copy_buf + m, (size_t)(n - m));
    d->prefix_len = (size_t)(n - m);
    d->prefix_off = 0;
    d->blocked = 1;
    return 0;
  }
  if (drained) return d->eof; /* drained: the next input edge says when there is more */
  d->spliced = 1;             /* a full buffer: bulk transfer, splice from here on */
  return 1;
}

/* Splice mode: source to pipe, pipe to destination. Same results as copy_once. */
static int splice_once(relay *r, int i) {
  direction *d = &r->d[i];
  if (d->r < 0) {
    int err = pipe_take(r->inst, d);
    if (err != 0) {
      fail(r, i, err);
      return -1;
    }
  }
  ssize_t n = splice(r->fd[i], NULL, d->w, NULL, CHUNK, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (n == 0) {
    d->eof = 1;
    return 1;
  }
  if (n < 0) {
    if (errno == EINTR) return 1;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      pipe_release(r->inst, d);
      return 0;
    }
    fail(r, i, errno);
    return -1;
  }
  d->fill = (size_t)n;
  d->bytes += (uint64_t)n;
  int drained = (size_t)n < CHUNK;
  if (drained && d->rdhup) d->eof = 1;
  int done = drain_pipe(r, i, d->eof);
  if (done <= 0) return done;
  if (!drained) return 1;
  if (!d->eof) pipe_release(r->inst, d);
  return d->eof;
}

/*
 * Moves what it can of direction i (source fd[i], destination fd[1-i]) and forwards its FIN.
 * Edge-triggered: it stops only when the source is drained, the destination is full (`blocked`
 * until its output edge) or the turn's budget is spent (`more`: the pending list continues it).
 * Returns 0, or -1 after recording an error (the caller then ends the relay).
 */
static int pump(relay *r, int i) {
  direction *d = &r->d[i];
  d->more = 0;
  if (d->shut || d->blocked) return 0;
  for (int round = 0; round < ROUNDS; round++) {
    int go = d->prefix != NULL ? send_owed(r, i) : 1;
    if (go > 0 && d->fill > 0) go = drain_pipe(r, i, d->eof);
    if (go <= 0) return go;
    if (d->eof) return end_direction(r, i);
    go = d->spliced ? splice_once(r, i) : copy_once(r, i);
    if (go < 0) return -1;
    if (go == 0 && (d->blocked || !d->eof)) return 0;
  }
  d->more = 1;
  return 0;
}

static void pend(relay *r) {
  if (r->pending || !(r->d[DOWN].more || r->d[UP].more)) return;
  r->pending = 1;
  r->next_pending = r->inst->pending;
  r->inst->pending = r;
  kick(r->inst);
}

static int socket_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
  return err;
}

/* Takes the client's descriptor and starts relaying: prefix and early client bytes first, then
 * the client side joins the epoll set (after the first read, so its data is not reported twice). */
static int start_relaying(relay *r, int client) {
  r->fd[DOWN] = client;
  r->state = ST_RELAYING;
  if (pump(r, DOWN) < 0) return -1;
  int err = watch_side(r, DOWN);
  if (err != 0) {
    fail(r, DOWN, err);
    return -1;
  }
  return pump(r, UP);
}

static void on_connecting(relay *r, uint32_t events) {
  if (events & EPOLLRDHUP) r->d[UP].rdhup = 1;
  if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
  /* EPOLLOUT alone is a completed connect; only an error needs SO_ERROR. */
  int err = events & (EPOLLERR | EPOLLHUP) ? socket_error(r->fd[UP]) : 0;
  if (err == 0 && (events & (EPOLLERR | EPOLLHUP))) err = ECONNRESET; /* closed with no error left */
  if (err != 0) {
    record *rec = push_record(r->inst, REC_CONNECT_FAILED);
    if (rec != NULL) {
      rec->v[1] = handle_of(r);
      rec->v[2] = err;
    }
    teardown(r, OUTCOME_CLIENT_KEPT); /* the client descriptor, if any, is still JavaScript's */
    return;
  }
  if (r->client_fd < 0) {
    r->state = ST_CONNECTED;
    record *rec = push_record(r->inst, REC_CONNECTED);
    if (rec != NULL) rec->v[1] = handle_of(r);
    return;
  }
  int client = r->client_fd;
  r->client_fd = -1;
  if (start_relaying(r, client) < 0 || (r->d[DOWN].shut && r->d[UP].shut)) {
    finish(r);
    return;
  }
  pend(r);
}

static void on_relay_event(relay *r, int s, uint32_t events) {
  if (events & EPOLLRDHUP) r->d[s].rdhup = 1;
  if (events & EPOLLERR) {
    /* A reset shows here even when neither direction would touch the socket again soon (its
     * input finished, nothing to write to it): end now rather than at the idle timeout. */
    int err = socket_error(r->fd[s]);
    if (err != 0) {
      fail(r, s, err);
      finish(r);
      return;
    }
  }
  if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && r->d[1 - s].blocked) {
    /* The direction writing to this socket may go on. */
    r->d[1 - s].blocked = 0;
    if (pump(r, 1 - s) < 0) {
      finish(r);
      return;
    }
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
    if (pump(r, s) < 0) {
      finish(r);
      return;
    }
  }
  if (r->d[DOWN].shut && r->d[UP].shut) {
    finish(r);
    return;
  }
  pend(r);
}

/* Continues relays that stopped with bytes waiting; those still not done stay for the next turn. */
static void run_pending(instance *in) {
  relay *list = in->pending;
  in->pending = NULL;
  while (list != NULL) {
    relay *r = list;
    list = r->next_pending;
    r->pending = 0;
    r->next_pending = NULL;
    int slot = r->slot;
    uint32_t gen = in->relays.gens[slot];
    for (int i = 0; i < 2; i++) {
      if (!r->d[i].more) continue;
      if (pump(r, i) < 0) {
        finish(r);
        break;
      }
    }
    if (in->relays.items[slot] != r || in->relays.gens[slot] != gen) continue; /* finished */
    if (r->d[DOWN].shut && r->d[UP].shut) finish(r);
    else pend(r);
  }
}

/* Queues an accepted connection (fd >= 0) or an accept failure (fd = -errno). */
static void queue_accept(instance *in, int a, int fd, const struct sockaddr_storage *ss) {
  record *rec = push_record(in, REC_ACCEPTED);
  if (rec == NULL) {
    if (fd >= 0) close(fd); /* out of memory: shed it rather than lose the descriptor */
    return;
  }
  rec->v[1] = a;
  rec->v[2] = fd;
  rec->v[3] = ss != NULL ? format_addr(ss, rec->ip, sizeof rec->ip) : 0;
}

static void on_accept(instance *in, int a) {
  watched *ac = &in->acceptors.e[a];
  for (int k = 0; k < ACCEPTS && ac->fd >= 0; k++) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int fd = accept4(ac->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      queue_accept(in, a, fd, &ss); /* TCP_NODELAY comes from the listening socket */
      continue;
    }
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK) return;
    if (err == EINTR || err == ECONNABORTED) continue;
    if ((err == EMFILE || err == ENFILE) && in->reserve_fd >= 0) {
      /* Out of descriptors: shed the pending connection with the spare, so the listening
       * socket does not stay readable and spin the loop. */
      close(in->reserve_fd);
      int shed = accept4(ac->fd, NULL, NULL, SOCK_CLOEXEC);
      if (shed >= 0) close(shed);
      in->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    queue_accept(in, a, -err, NULL);
    return;
  }
}
/* ---- UDP: a listener socket read in batches, a connected upstream socket per client flow ---- */

/* Tells JavaScript of a datagram from a client with no flow (port < 0: a receive error, -errno). */
static void call_datagram(instance *in, int l, const char *ip, int port, const char *data, size_t len) {
  int ints[2] = {l, port};
  invoke(in, in->on_datagram, 2, ints, ip, len > 0 ? data : "", len);
}

static void call_udp_event(instance *in, int id, int kind) {
  int ints[2] = {id, kind};
  invoke(in, in->on_udp, 2, ints, NULL, NULL, 0);
}

static void make_ukey(ukey *k, int l, const struct sockaddr_storage *ss) {
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

static int flow_table_put(instance *in, udp_flow *f);

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

static int flow_table_put(instance *in, udp_flow *f) {
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

static void flow_free(instance *in, udp_flow *f) {
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

static void on_udp_listener(instance *in, int l) {
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
static void on_udp_flow(instance *in, udp_flow *f) {
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
    if (!f->answered) {
      f->answered = 1;
      call_udp_event(in, id, UDP_ANSWERED);
      if (in->flows.items[id] != f || in->flows.gens[id] != gen) return;
    }
    if (n < UDP_BATCH) return;
  }
}


/* ---- the loop: epoll events in, records out ---- */

/*
 * Hands the queued records to JavaScript: up to MAIL_RECS per call, copied into the shared
 * mailbox, with the addresses of ACCEPTED records as string arguments (record field 4 holds the
 * argument's index). Records queued while JavaScript reads (its calls into the relay can end
 * one) go in the next call of the same loop.
 */
static void hand_over(instance *in) {
  if (in->dispatching) return;
  napi_env env = in->env;
  while (in->qn > 0) {
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;
    napi_value fn, recv, result, argv[1 + MAIL_RECS];
    bool ok = napi_get_reference_value(env, in->on_batch, &fn) == napi_ok &&
              napi_get_global(env, &recv) == napi_ok;
    int n = in->qn < MAIL_RECS ? in->qn : MAIL_RECS;
    size_t argc = 1;
    for (int k = 0; ok && k < n; k++) {
      record *rec = &in->queue[k];
      if (rec->v[0] == REC_ACCEPTED && rec->v[2] >= 0) {
        ok = napi_create_string_latin1(env, rec->ip, NAPI_AUTO_LENGTH, &argv[argc]) == napi_ok;
        rec->v[4] = (double)argc++;
      }
      memcpy(in->mail + (size_t)k * REC_LEN, rec->v, sizeof rec->v);
    }
    ok = ok && napi_create_int32(env, n, &argv[0]) == napi_ok;
    if (!ok) {
      napi_close_handle_scope(env, scope);
      return; /* the records stay queued; the next turn tries again */
    }
    in->qn -= n;
    memmove(in->queue, in->queue + n, sizeof(record) * (size_t)in->qn);
    in->dispatching = 1;
    napi_make_callback(env, in->async, recv, fn, argc, argv, &result);
    in->dispatching = 0;
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value err;
      napi_get_and_clear_last_exception(env, &err);
      napi_fatal_exception(env, err);
    }
    napi_close_handle_scope(env, scope);
  }
  release_retired(&in->relays);
}

/* The loop turn after records were queued or relays stopped with bytes waiting. */
static void on_later(uv_idle_t *h) {
  instance *in = h->data;
  run_pending(in);
  hand_over(in);
  if (in->pending == NULL && in->qn == 0) {
    uv_idle_stop(&in->later);
    in->later_on = 0;
  }
}

/* The loop says the epoll set has events: take them all, in batches. */
static void on_epoll(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  instance *in = h->data;
  struct epoll_event evs[BATCH];
  for (;;) {
    int n = epoll_wait(in->epfd, evs, BATCH, 0);
    if (n <= 0) break; /* 0, or EINTR: the loop polls again */
    for (int k = 0; k < n; k++) {
      uint64_t key = evs[k].data.u64;
      uint32_t gen = (uint32_t)(key >> 32);
      int kind = (int)((key >> KIND_SHIFT) & 3);
      int index = (int)((key & ((1u << KIND_SHIFT) - 1)) >> 1);
      if (kind == KIND_ACCEPTOR) {
        if (index < in->acceptors.n && in->acceptors.e[index].fd >= 0 && in->acceptors.e[index].gen == gen)
          on_accept(in, index);
        continue;
      }
      if (kind == KIND_UDP_LISTENER) {
        if (index < in->ulisteners.n && in->ulisteners.e[index].fd >= 0 && in->ulisteners.e[index].gen == gen)
          on_udp_listener(in, index);
        continue;
      }
      if (kind == KIND_UDP_FLOW) {
        if (index < in->flows.n && in->flows.items[index] != NULL && in->flows.gens[index] == gen)
          on_udp_flow(in, in->flows.items[index]);
        continue;
      }
      int slot = index, s = (int)(key & 1);
      if (slot >= in->relays.n || in->relays.gens[slot] != gen) continue; /* ended earlier in this batch */
      relay *r = in->relays.items[slot];
      if (r == NULL) continue;
      uint32_t ev = evs[k].events;
      if (r->state == ST_CONNECTING) {
        if (s == UP) on_connecting(r, ev);
      } else if (r->state == ST_RELAYING) {
        on_relay_event(r, s, ev);
      } else if (ev & EPOLLRDHUP) {
        r->d[s].rdhup = 1; /* connected, waiting for attach(): it reads what came meanwhile */
      }
    }
    if (n < BATCH) break;
  }
  hand_over(in);
}

/* ---- JavaScript bindings ---- */

#define CHECK(call)                                                                                   \
  do {                                                                                                \
    if ((call) != napi_ok) {                                                                          \
      napi_throw_error(env, NULL, "sluice relay: " #call " failed");                                  \
      return NULL;                                                                                    \
    }                                                                                                 \
  } while (0)

static instance *get_instance(napi_env env) {
  void *data = NULL;
  if (napi_get_instance_data(env, &data) != napi_ok) return NULL;
  return data;
}

static napi_value throw_errno(napi_env env, const char *what, int err, int side) {
  char msg[128];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_value code, text, error, sv;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, NULL, text, &error);
  napi_create_int32(env, err, &code);
  napi_set_named_property(env, error, "errno", code);
  if (side >= 0) {
    napi_create_int32(env, side, &sv);
    napi_set_named_property(env, error, "side", sv);
  }
  napi_throw(env, error);
  return NULL;
}

static napi_value int_value(napi_env env, int64_t v) {
  napi_value result;
  if (napi_create_int64(env, v, &result) != napi_ok) return NULL;
  return result;
}

static napi_value number_value(napi_env env, double v) {
  napi_value result;
  if (napi_create_double(env, v, &result) != napi_ok) return NULL;
  return result;
}

/* A Float64Array argument of at least `want` elements, or NULL (with a TypeError thrown). */
static double *float64_arg(napi_env env, napi_value v, size_t want, const char *what) {
  napi_typedarray_type type;
  size_t length;
  void *data;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, NULL, NULL) != napi_ok ||
      type != napi_float64_array || length < want) {
    napi_throw_type_error(env, NULL, what);
    return NULL;
  }
  return data;
}

/* init(onBatch: (count, ...ips) => void, mail: Float64Array(MAIL_RECS × 8), stats: Float64Array(8),
 *      onDatagram: (listener, port, ip, payload) => void, onUdp: (flow, kind) => void) */
static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  instance *in = get_instance(env);
  double *mail = float64_arg(env, argv[1], (size_t)MAIL_RECS * REC_LEN, "mail must be a Float64Array of 2048");
  if (mail == NULL) return NULL;
  double *stats = float64_arg(env, argv[2], STATS_LEN, "stats must be a Float64Array of 8");
  if (stats == NULL) return NULL;
  if (in->on_batch != NULL) {
    napi_delete_reference(env, in->on_batch);
    napi_delete_reference(env, in->mail_ref);
    napi_delete_reference(env, in->stats_ref);
    napi_delete_reference(env, in->on_datagram);
    napi_delete_reference(env, in->on_udp);
  }
  CHECK(napi_create_reference(env, argv[0], 1, &in->on_batch));
  CHECK(napi_create_reference(env, argv[1], 1, &in->mail_ref));
  CHECK(napi_create_reference(env, argv[2], 1, &in->stats_ref));
  CHECK(napi_create_reference(env, argv[3], 1, &in->on_datagram));
  CHECK(napi_create_reference(env, argv[4], 1, &in->on_udp));
  in->mail = mail;
  in->stats = stats;
  if (in->epfd < 0) {
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) return throw_errno(env, "epoll_create1", errno, -1);
    int err = uv_poll_init(in->loop, &in->epoll_watch, epfd);
    if (err == 0) {
      in->epoll_watch.data = in;
      err = uv_poll_start(&in->epoll_watch, UV_READABLE, on_epoll);
    }
    if (err == 0) err = uv_idle_init(in->loop, &in->later);
    if (err != 0) {
      close(epfd);
      napi_throw_error(env, NULL, uv_strerror(err));
      return NULL;
    }
    in->later.data = in;
    in->epfd = epfd;
    in->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    /* Referenced only while relays or acceptors are open (update_ref); the idle handle only while
     * it has work (kick). */
    uv_unref((uv_handle_t *)&in->epoll_watch);
  }
  return NULL;
}

static relay *relay_new(instance *in) {
  relay *r = calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  r->inst = in;
  r->fd[DOWN] = r->fd[UP] = -1;
  r->client_fd = -1;
  r->first_fin = -1;
  r->err_side = -1;
  for (int s = 0; s < 2; s++) r->d[s].r = r->d[s].w = -1;
  r->slot = id_take(&in->relays, r);
  if (r->slot < 0) {
    free(r);
    return NULL;
  }
  if (in->relays_open++ == 0) update_ref(in);
  return r;
}

/* The arguments, the first of them a handle; the relay it names, or NULL when it has ended. */
static relay *handle_arg(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  int64_t h;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int64(env, argv[0], &h) != napi_ok)
    return NULL;
  return relay_of(get_instance(env), h);
}

/* The item whose id is the first argument (the others go to argv), or NULL. */
static void *id_arg(napi_env env, napi_callback_info info, id_table *t, size_t want, napi_value *argv) {
  size_t argc = want;
  int32_t id;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int32(env, argv[0], &id) != napi_ok)
    return NULL;
  if (id < 0 || id >= t->n) return NULL;
  return t->items[id];
}

/* Copies a Buffer argument (undefined: none) to a malloc'ed block; false when out of memory. */
static bool copy_buffer(napi_env env, napi_value v, char **out, size_t *len) {
  *out = NULL;
  *len = 0;
  bool is_buffer = false;
  if (napi_is_buffer(env, v, &is_buffer) != napi_ok || !is_buffer) return true;
  void *bytes;
  size_t n;
  if (napi_get_buffer_info(env, v, &bytes, &n) != napi_ok || n == 0) return true;
  *out = malloc(n);
  if (*out == NULL) return false;
  memcpy(*out, bytes, n);
  *len = n;
  return true;
}

/* connect(ip, port, clientFd = -1, prefix?: Buffer) => handle, or -errno when it failed at once.
 * With clientFd the relay attaches it once connected (until then, and after CONNECT_FAILED, the
 * descriptor stays the caller's) and sends `prefix` first. */
static napi_value js_connect(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  instance *in = get_instance(env);
  if (in->epfd < 0) {
    napi_throw_error(env, NULL, "sluice relay: init() first");
    return NULL;
  }
  char ip[64];
  size_t iplen;
  int32_t port, client = -1;
  CHECK(napi_get_value_string_utf8(env, argv[0], ip, sizeof ip, &iplen));
  CHECK(napi_get_value_int32(env, argv[1], &port));
  if (argc > 2) CHECK(napi_get_value_int32(env, argv[2], &client));
  struct sockaddr_storage ss;
  socklen_t sslen;
  size_t max_payload;
  if (parse_addr(ip, port, &ss, &sslen, &max_payload) < 0) return int_value(env, -EINVAL);
  char *prefix = NULL;
  size_t prefix_len = 0;
  if (argc > 3 && !copy_buffer(env, argv[3], &prefix, &prefix_len)) return int_value(env, -ENOMEM);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1, err = 0;
  if (fd < 0) {
    err = errno;
  } else if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ||
             (connect(fd, (struct sockaddr *)&ss, sslen) < 0 && errno != EINPROGRESS)) {
    err = errno;
    close(fd);
  }
  relay *r = err == 0 ? relay_new(in) : NULL;
  if (err == 0 && r == NULL) {
    err = ENOMEM;
    close(fd);
  }
  if (err != 0) {
    free(prefix);
    return int_value(env, -err);
  }
  r->fd[UP] = fd;
  r->state = ST_CONNECTING;
  r->client_fd = client;
  r->d[DOWN].prefix = prefix;
  r->d[DOWN].prefix_len = prefix_len;
  /* Registered after connect(): a connect that completed meanwhile is reported at once. */
  err = watch_side(r, UP);
  if (err != 0) {
    teardown(r, OUTCOME_NONE);
    return int_value(env, -err);
  }
  return number_value(env, handle_of(r));
}

/* attach(handle, clientFd, prefix?: Buffer, own?: boolean): starts relaying a CONNECTED relay; with
 * `own` the relay takes the descriptor itself (it was accept()ed by the relay) instead of a dup */
static napi_value js_attach(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  napi_get_undefined(env, &argv[2]);
  napi_get_undefined(env, &argv[3]);
  relay *r = handle_arg(env, info, 4, argv);
  if (r == NULL || r->state != ST_CONNECTED) {
    napi_throw_error(env, NULL, "sluice relay: attach() needs a connected relay");
    return NULL;
  }
  int32_t fd;
  CHECK(napi_get_value_int32(env, argv[1], &fd));
  if (!copy_buffer(env, argv[2], &r->d[DOWN].prefix, &r->d[DOWN].prefix_len))
    return throw_errno(env, "malloc", ENOMEM, -1);
  bool own = false;
  napi_get_value_bool(env, argv[3], &own);
  int client = own ? fd : fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (client < 0) {
    int err = errno;
    free(r->d[DOWN].prefix);
    r->d[DOWN].prefix = NULL;
    r->d[DOWN].prefix_len = 0;
    return throw_errno(env, "dup", err, -1); /* still connected: detach() still works */
  }
  /* Upstream edges seen while waiting were not acted on: start_relaying reads both ways. */
  if (start_relaying(r, client) < 0) {
    int side = r->err_side, err = r->err_no;
    /* The caller still holds the client's descriptor (or the socket it was dup'ed from). */
    unwatch_side(r, DOWN);
    if (own) r->fd[DOWN] = -1;
    teardown(r, OUTCOME_NONE);
    return throw_errno(env, "relay", err, side);
  }
  if (r->d[DOWN].shut && r->d[UP].shut) finish(r);
  else pend(r);
  return NULL;
}

/* detach(handle) => the connected upstream descriptor, now the caller's */
static napi_value js_detach(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  relay *r = handle_arg(env, info, 1, argv);
  if (r == NULL || r->state != ST_CONNECTED) {
    napi_throw_error(env, NULL, "sluice relay: detach() needs a connected relay");
    return NULL;
  }
  int err = unwatch_side(r, UP);
  int fd = r->fd[UP];
  r->fd[UP] = -1;
  teardown(r, OUTCOME_NONE);
  if (err != 0) {
    close(fd);
    return throw_errno(env, "epoll_ctl", err, 1);
  }
  return int_value(env, fd);
}

/* info(handle) => its state (0 when it has ended); fills stats */
static napi_value js_info(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  relay *r = handle_arg(env, info, 1, argv);
  if (r != NULL) write_stats(r);
  return int_value(env, r != NULL ? r->state : 0);
}

/* abort(handle) => OUTCOME_NONE (0) when it ended long ago (its record was handed over), else what
 * became of the client: 1 still the caller's, 2 closed with the relay. A relay still running ends
 * now (no record; stats filled); one that ended with its record not yet handed over only answers. */
static napi_value js_abort(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  relay *r = handle_arg(env, info, 1, argv);
  if (r == NULL) {
    int64_t h = -1;
    napi_get_value_int64(env, argv[0], &h);
    return int_value(env, retired_outcome(get_instance(env), h));
  }
  write_stats(r);
  int result = r->fd[DOWN] >= 0 ? OUTCOME_CLIENT_CLOSED : OUTCOME_CLIENT_KEPT;
  teardown(r, OUTCOME_NONE);
  return int_value(env, result);
}

/* Reads (epoll, level-triggered) a dup of a socket JavaScript bound; its index, or a throw. */
static napi_value watch_socket(napi_env env, watch_table *t, int kind, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  instance *in = get_instance(env);
  if (in->epfd < 0) {
    napi_throw_error(env, NULL, "sluice relay: init() first");
    return NULL;
  }
  int i = 0;
  while (i < t->n && t->e[i].fd >= 0) i++;
  if (i == MAX_WATCHED) return throw_errno(env, "listen", EMFILE, -1);
  int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return throw_errno(env, "dup", errno, -1);
  /* Set once on the listening socket, TCP_NODELAY is inherited by every socket it accepts. */
  int one = 1;
  if (kind == KIND_ACCEPTOR && setsockopt(dup, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
    int err = errno;
    close(dup);
    return throw_errno(env, "setsockopt", err, -1);
  }
  watched *w = &t->e[i];
  w->gen++;
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = KEY(w->gen, kind, i, 0)};
  if (epoll_ctl(in->epfd, EPOLL_CTL_ADD, dup, &ev) < 0) {
    int err = errno;
    close(dup);
    return throw_errno(env, "epoll_ctl", err, -1);
  }
  w->fd = dup;
  if (i == t->n) t->n++;
  if (t->open++ == 0) update_ref(in);
  return int_value(env, i);
}

/* Stops reading a watched socket and closes the relay's copy (JavaScript's stays open). */
static napi_value unwatch_socket(napi_env env, watch_table *t, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t i;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &i));
  instance *in = get_instance(env);
  if (i >= 0 && i < t->n && t->e[i].fd >= 0) {
    /* Explicitly: the socket stays open elsewhere, so closing ours would not take it out. */
    int err = epoll_ctl(in->epfd, EPOLL_CTL_DEL, t->e[i].fd, NULL) < 0 ? errno : 0;
    close(t->e[i].fd);
    t->e[i].fd = -1;
    t->e[i].gen++;
    if (--t->open == 0) update_ref(in);
    /* The entry is free either way; a failed removal leaves a registration that the generation
     * check ignores until the socket closes, so it is reported, not fatal. */
    if (err != 0) return throw_errno(env, "epoll_ctl", err, -1);
  }
  return NULL;
}

/* listen(fd) => id: accepts the connections of a bound, listening TCP socket */
static napi_value js_listen(napi_env env, napi_callback_info info) {
  return watch_socket(env, &get_instance(env)->acceptors, KIND_ACCEPTOR, info);
}

/* unlisten(id): stops accepting */
static napi_value js_unlisten(napi_env env, napi_callback_info info) {
  return unwatch_socket(env, &get_instance(env)->acceptors, info);
}

/* sockname(fd) => "ip port": the local address of a connected socket */
static napi_value js_sockname(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  char out[INET6_ADDRSTRLEN + 8] = "";
  if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
    char ip[INET6_ADDRSTRLEN];
    int port = format_addr(&ss, ip, sizeof ip);
    snprintf(out, sizeof out, "%s %d", ip, port);
  }
  napi_value result;
  CHECK(napi_create_string_latin1(env, out, NAPI_AUTO_LENGTH, &result));
  return result;
}
/* udpListen(fd) => id: reads a bound UDP socket's datagrams in batches */
static napi_value js_udp_listen(napi_env env, napi_callback_info info) {
  instance *in = get_instance(env);
  if (in->rbuf == NULL) {
    in->rbuf = malloc((size_t)UDP_BATCH * UDP_MAX);
    if (in->rbuf == NULL) return throw_errno(env, "malloc", ENOMEM, -1);
  }
  return watch_socket(env, &in->ulisteners, KIND_UDP_LISTENER, info);
}

/* udpUnlisten(id): stops reading (its flows must be closed first: replies leave from it) */
static napi_value js_udp_unlisten(napi_env env, napi_callback_info info) {
  return unwatch_socket(env, &get_instance(env)->ulisteners, info);
}

/*
 * udpFlow(listener, backendIp, backendPort, header?: Buffer) => flow id, or -errno. Only while
 * JavaScript decides on a datagram from onDatagram: the flow is filed under that datagram's source.
 */
static napi_value js_udp_flow(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  instance *in = get_instance(env);
  int32_t l, port;
  char ip[64];
  size_t iplen;
  CHECK(napi_get_value_int32(env, argv[0], &l));
  CHECK(napi_get_value_string_utf8(env, argv[1], ip, sizeof ip, &iplen));
  CHECK(napi_get_value_int32(env, argv[2], &port));
  if (in->src == NULL || in->src_listener != l) return int_value(env, -EINVAL);
  struct sockaddr_storage ss;
  socklen_t sslen;
  size_t max_payload;
  if (parse_addr(ip, port, &ss, &sslen, &max_payload) < 0) return int_value(env, -EINVAL);
  udp_flow *f = calloc(1, sizeof *f);
  if (f == NULL) return int_value(env, -ENOMEM);
  if (argc > 3) {
    bool is_buffer = false;
    napi_is_buffer(env, argv[3], &is_buffer);
    if (is_buffer) {
      void *bytes;
      size_t len;
      CHECK(napi_get_buffer_info(env, argv[3], &bytes, &len));
      if (len > 0) {
        f->header = malloc(len);
        if (f->header == NULL) {
          free(f);
          return int_value(env, -ENOMEM);
        }
        memcpy(f->header, bytes, len);
        f->header_len = len;
      }
    }
  }
  f->fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (f->fd < 0 || connect(f->fd, (struct sockaddr *)&ss, sslen) < 0) {
    int err = errno;
    if (f->fd >= 0) close(f->fd);
    free(f->header);
    free(f);
    return int_value(env, -err);
  }
  f->listener = l;
  f->max_payload = max_payload;
  memcpy(&f->client, in->src, in->src_len);
  f->client_len = in->src_len;
  make_ukey(&f->key, l, in->src);
  f->id = id_take(&in->flows, f);
  if (f->id < 0) {
    close(f->fd);
    free(f->header);
    free(f);
    return int_value(env, -ENOMEM);
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = KEY(in->flows.gens[f->id], KIND_UDP_FLOW, f->id, 0)};
  if (epoll_ctl(in->epfd, EPOLL_CTL_ADD, f->fd, &ev) < 0 || flow_table_put(in, f) < 0) {
    int err = errno != 0 ? errno : ENOMEM;
    close(f->fd);
    free(f->header);
    id_release(&in->flows, f->id);
    free(f);
    return int_value(env, -err);
  }
  if (in->flows_open++ == 0) update_ref(in);
  return int_value(env, f->id);
}

static udp_flow *flow_arg(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  return id_arg(env, info, &get_instance(env)->flows, want, argv);
}

/* udpSend(flow, payload) => 0, or -errno (EMSGSIZE when the header makes it too big) */
static napi_value js_udp_send(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  udp_flow *f = flow_arg(env, info, 2, argv);
  if (f == NULL) return int_value(env, -EBADF);
  void *bytes;
  size_t len;
  CHECK(napi_get_buffer_info(env, argv[1], &bytes, &len));
  if (len + f->header_len > f->max_payload) {
    f->drop_size++;
    return int_value(env, -EMSGSIZE);
  }
  struct iovec iov[2] = {{f->header, f->header_len}, {bytes, len}};
  struct msghdr m = {0};
  m.msg_iov = f->header_len > 0 ? iov : iov + 1;
  m.msg_iovlen = f->header_len > 0 ? 2 : 1;
  if (sendmsg(f->fd, &m, MSG_DONTWAIT) < 0) return int_value(env, -errno);
  f->dg_in++;
  f->bytes_in += len;
  return int_value(env, 0);
}

/* udpInfo(flow) => true while open; fills stats with its counters */
static napi_value js_udp_info(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  udp_flow *f = flow_arg(env, info, 1, argv);
  if (f != NULL) {
    double *s = get_instance(env)->stats;
    s[0] = (double)f->dg_in;
    s[1] = (double)f->bytes_in;
    s[2] = (double)f->dg_out;
    s[3] = (double)f->bytes_out;
    s[4] = (double)f->drop_size;
    s[5] = (double)f->drop_full;
  }
  napi_value result;
  CHECK(napi_get_boolean(env, f != NULL, &result));
  return result;
}

/* udpClose(flow): closes its upstream socket; its client's next datagram goes to JavaScript */
static napi_value js_udp_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  udp_flow *f = flow_arg(env, info, 1, argv);
  if (f != NULL) flow_free(get_instance(env), f);
  return NULL;
}


/* counts() => [relays open, pipes open, pipes pooled] */
static napi_value js_counts(napi_env env, napi_callback_info info) {
  (void)info;
  instance *in = get_instance(env);
  napi_value arr;
  CHECK(napi_create_array_with_length(env, 3, &arr));
  CHECK(napi_set_element(env, arr, 0, int_value(env, in->relays_open)));
  CHECK(napi_set_element(env, arr, 1, int_value(env, in->pipes_open)));
  CHECK(napi_set_element(env, arr, 2, int_value(env, in->pool_n)));
  return arr;
}

static void instance_free(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  instance *in = data;
  /* Runs as the environment goes away. The instance itself is left: the loop may still list its
   * epoll watcher until the process exits. */
  for (int i = 0; i < in->pool_n; i++) {
    close(in->pool[i][0]);
    close(in->pool[i][1]);
  }
  free(in->relays.items);
  free(in->relays.gens);
  free(in->relays.free);
  free(in->relays.outcome);
  free(in->relays.retired);
  free(in->flows.items);
  free(in->flows.gens);
  free(in->flows.free);
  free(in->flows.outcome);
  free(in->flows.retired);
  free(in->queue);
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  instance *in = calloc(1, sizeof *in);
  if (in == NULL) {
    napi_throw_error(env, NULL, "sluice relay: out of memory");
    return NULL;
  }
  in->env = env;
  in->epfd = -1;
  in->reserve_fd = -1;
  for (int i = 0; i < MAX_WATCHED; i++) in->acceptors.e[i].fd = in->ulisteners.e[i].fd = -1;
  CHECK(napi_get_uv_event_loop(env, &in->loop));
  napi_value name;
  CHECK(napi_create_string_utf8(env, "sluice.relay", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_async_init(env, NULL, name, &in->async));
  CHECK(napi_set_instance_data(env, in, instance_free, NULL));
  napi_property_descriptor props[] = {
      {"init", NULL, js_init, NULL, NULL, NULL, napi_default, NULL},
      {"connect", NULL, js_connect, NULL, NULL, NULL, napi_default, NULL},
      {"attach", NULL, js_attach, NULL, NULL, NULL, napi_default, NULL},
      {"detach", NULL, js_detach, NULL, NULL, NULL, napi_default, NULL},
      {"info", NULL, js_info, NULL, NULL, NULL, napi_default, NULL},
      {"abort", NULL, js_abort, NULL, NULL, NULL, napi_default, NULL},
      {"counts", NULL, js_counts, NULL, NULL, NULL, napi_default, NULL},
      {"listen", NULL, js_listen, NULL, NULL, NULL, napi_default, NULL},
      {"unlisten", NULL, js_unlisten, NULL, NULL, NULL, napi_default, NULL},
      {"sockname", NULL, js_sockname, NULL, NULL, NULL, napi_default, NULL},
      {"udpListen", NULL, js_udp_listen, NULL, NULL, NULL, napi_default, NULL},
      {"udpUnlisten", NULL, js_udp_unlisten, NULL, NULL, NULL, napi_default, NULL},
      {"udpFlow", NULL, js_udp_flow, NULL, NULL, NULL, napi_default, NULL},
      {"udpSend", NULL, js_udp_send, NULL, NULL, NULL, napi_default, NULL},
      {"udpInfo", NULL, js_udp_info, NULL, NULL, NULL, napi_default, NULL},
      {"udpClose", NULL, js_udp_close, NULL, NULL, NULL, napi_default, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}
