/*
 * sluice splice relay: accepts and connects TCP sessions and moves their bytes between the two
 * sockets inside the kernel (splice(2) through a pipe), so no byte crosses into JavaScript and
 * no Buffer is allocated per read.
 *
 * The sockets are watched by one epoll set of the relay's own, itself watched by the Node.js event
 * loop (uv_poll on the epoll descriptor): a socket is added once, its interest changed only when a
 * direction blocks, unblocks or ends (level-triggered), and it leaves the set when it is closed.
 *
 * It also accepts connections for listeners JavaScript bound (listen(fd): the relay keeps its own
 * copy of the listening socket and calls back with each accepted descriptor, TCP_NODELAY set, and
 * the client address), so a session that needs no preface never gets a net.Socket at all. When
 * out of descriptors it sheds the pending connection with a spare one, as libuv does.
 *
 * UDP goes the same way: the relay reads a bound UDP socket in batches (recvmmsg), sends the
 * datagrams of known clients straight to their flow's connected upstream socket (sendmmsg, with
 * the flow's PROXY v2 header in front when it has one) and replies back from the listener's
 * socket; a datagram from a new client goes to JavaScript, which runs its checks and creates the
 * flow (udpFlow) while the relay holds that datagram. Flows keep counters JavaScript reads for
 * expiry and metrics, and report refusals (ICMP port unreachable) and answers after them.
 *
 * A relay's life, driven from JavaScript through its slot number:
 *   connect(ip, port)        opens the upstream socket (non-blocking, TCP_NODELAY); JavaScript is
 *                            called back with CONNECTED or CONNECT_FAILED (errno in stats);
 *   attach(slot, fd, prefix, own) takes the client's socket (dup'ed unless `own`: accepted by
 *                            the relay) and starts relaying, `prefix` (a PROXY header, bytes
 *                            read during the preface) first;
 *   detach(slot)             gives a connected upstream socket back (JavaScript relays it itself);
 *   abort(slot)              closes everything now, no callback (timeouts, drains, shutdown);
 *   info(slot)               counters for idle and half-closed timeouts and metrics.
 * While relaying, a direction is read only while its pipe is empty and its destination is not
 * blocked (at most one pipe buffered per direction, the sender held back by TCP); FIN is
 * forwarded with shutdown(SHUT_WR) once the pipe has drained (half-close each way); the relay
 * ends when both directions have finished, or at the first error on either socket, and JavaScript
 * is called back once with ENDED. Pipes come from a per-process pool and are held only while bytes
 * are in flight, so an idle session holds none.
 *
 * Everything runs on the event loop's thread. Epoll events carry the slot and a generation
 * number, so an event for a relay that ended earlier in the same batch is recognised and dropped.
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
/* Splices per direction per wake-up before yielding to the rest of the loop. */
#define ROUNDS 16
/* Empty pipes kept for reuse; more are closed when released. */
#define POOL_MAX 256
/* Epoll events taken per epoll_wait call. */
#define BATCH 128

#define DOWN 0 /* the client's socket */
#define UP 1   /* the backend's socket */

/* What JavaScript's callback is told. */
enum { EV_ENDED = 0, EV_CONNECTED = 1, EV_CONNECT_FAILED = 2 };
enum { ST_CONNECTING, ST_CONNECTED, ST_RELAYING };

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
} id_table;

typedef struct {
  int r, w; /* -1 when no pipe is held */
  size_t fill;
  uint64_t bytes; /* delivered to the destination */
  char *prefix; /* bytes owed to the destination: the prefix, or what it could not take */
  size_t prefix_len, prefix_off;
  int spliced; /* bulk seen: this direction splices from now on */
  int eof;     /* the source sent FIN */
  int shut;    /* FIN forwarded (shutdown(SHUT_WR) on the destination) */
  int blocked; /* waiting for the destination to become writable */
} direction;

typedef struct {
  instance *inst;
  int slot;
  int state;
  int fd[2]; /* -1 when not open */
  uint32_t mask[2];
  int registered[2];
  direction d[2]; /* d[DOWN]: client -> backend; d[UP]: backend -> client */
  int first_fin;  /* -1, DOWN or UP */
  int err_side;   /* -1, DOWN or UP */
  int err_no;
} relay;

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
#define ACCEPTS 16
/* Event keys: generation << 32 | kind << 30 | index << 1 | side. */
#define KIND_SHIFT 30
enum { KIND_RELAY = 0, KIND_ACCEPTOR = 1, KIND_UDP_LISTENER = 2, KIND_UDP_FLOW = 3 };
#define KEY(gen, kind, index, side)                                                                 \
  (((uint64_t)(gen) << 32) | ((uint64_t)(kind) << KIND_SHIFT) | ((uint64_t)(index) << 1) | (uint64_t)(side))

struct instance {
  napi_env env;
  watch_table acceptors;
  int reserve_fd; /* spare descriptor, given up to shed a connection when out of descriptors */
  napi_ref on_accept;
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
  napi_ref on_event;
  napi_ref stats_ref;
  double *stats;
  napi_async_context async;
  id_table relays; /* relay * */
  int pool[POOL_MAX][2];
  int pool_n;
  int64_t pipes_open;
  int64_t relays_open;
};

/* stats layout shared with JavaScript (a Float64Array given to init). */
enum { S_BYTES_UP, S_BYTES_DOWN, S_FIRST_FIN, S_ERR_SIDE, S_ERR_NO };
/* Its length: UDP flows report six counters (js_udp_info); two spare. */
#define STATS_LEN 8

/* Takes a free id for `item` (growing the table as needed); -1 when out of memory. */
static int id_take(id_table *t, void *item) {
  if (t->nfree == 0) {
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
    for (int i = t->n; i < n; i++) {
      items[i] = NULL;
      gens[i] = 0;
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
}

static uint64_t event_key(relay *r, int side) {
  return KEY(r->inst->relays.gens[r->slot], KIND_RELAY, r->slot, side);
}

/* Registers, changes or (mask 0 on a registered socket) quiets the epoll interest of one side. */
static int set_interest(relay *r, int s, uint32_t mask) {
  if (r->fd[s] < 0) return 0;
  if (r->registered[s] && r->mask[s] == mask) return 0;
  if (!r->registered[s] && mask == 0) return 0;
  struct epoll_event ev = {.events = mask, .data.u64 = event_key(r, s)};
  int op = r->registered[s] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
  if (epoll_ctl(r->inst->epfd, op, r->fd[s], &ev) < 0) return errno;
  r->registered[s] = 1;
  r->mask[s] = mask;
  return 0;
}

/* Forgets one side's registration (the descriptor stays open: given back, or still shared). */
static void unregister(relay *r, int s) {
  if (!r->registered[s]) return;
  epoll_ctl(r->inst->epfd, EPOLL_CTL_DEL, r->fd[s], NULL);
  r->registered[s] = 0;
  r->mask[s] = 0;
}


/* Keeps the process alive while relays or acceptors are open, as their sockets would. */
static void update_ref(instance *in) {
  if (in->relays_open + in->acceptors.open + in->ulisteners.open + in->flows_open > 0)
    uv_ref((uv_handle_t *)&in->epoll_watch);
  else
    uv_unref((uv_handle_t *)&in->epoll_watch);
}

/* Frees the relay and its slot; closes its descriptors (which takes them out of the epoll set). */
static void teardown(relay *r) {
  instance *in = r->inst;
  for (int s = 0; s < 2; s++) {
    if (r->fd[s] >= 0) close(r->fd[s]);
    pipe_release(in, &r->d[s]);
  }
  free(r->d[DOWN].prefix);
  free(r->d[UP].prefix);
  id_release(&in->relays, r->slot);
  if (--in->relays_open == 0) update_ref(in);
  free(r);
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

static void call_js(instance *in, int slot, int kind) {
  int ints[2] = {slot, kind};
  invoke(in, in->on_event, 2, ints, NULL, NULL, 0);
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

/* The relay ended on its own: tear it down and tell JavaScript. */
static void finish(relay *r) {
  instance *in = r->inst;
  int slot = r->slot;
  write_stats(r);
  teardown(r);
  call_js(in, slot, EV_ENDED);
}

static void fail(relay *r, int side, int err) {
  if (r->err_side < 0) {
    r->err_side = side;
    r->err_no = err;
  }
}

/*
 * Moves what it can of direction i (source fd[i], destination fd[1-i]). Returns 0, or -1 after
 * recording an error (the caller then ends the relay).
 */
static int pump(relay *r, int i) {
  direction *d = &r->d[i];
  int src = r->fd[i], dst = r->fd[1 - i];
  if (d->shut || d->blocked) return 0;
  for (int round = 0; round < ROUNDS; round++) {
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
    if (d->prefix != NULL) {
      free(d->prefix);
      d->prefix = NULL;
      d->prefix_len = d->prefix_off = 0;
    }
    if (!d->spliced && !d->eof) {
      /* Copy mode: small messages cost one recv and one send, cheaper than two splices. */
      ssize_t n = recv(src, copy_buf, COPY_SIZE, 0);
      if (n > 0) {
        d->bytes += (uint64_t)n;
        ssize_t m = send(dst, copy_buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (m < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          fail(r, 1 - i, errno);
          return -1;
        }
        if (m < 0) m = 0;
        if (m < n) {
          /* The destination is full: keep the rest (at most COPY_SIZE) until it drains. */
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
        if (n < COPY_SIZE) return 0; /* drained; level-triggered polling says when there is more */
        d->spliced = 1;              /* a full buffer: bulk transfer, splice from here on */
        continue;
      } else if (n == 0) {
        d->eof = 1;
      } else if (errno == EINTR) {
        continue;
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return 0;
      } else {
        fail(r, i, errno);
        return -1;
      }
    }
    if (d->fill > 0) {
      ssize_t n = splice(d->r, NULL, dst, NULL, d->fill, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        d->fill -= (size_t)n;
        d->bytes += (uint64_t)n;
        if (d->fill > 0) continue;
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
    if (d->eof) {
      pipe_release(r->inst, d);
      /* ENOTCONN: the destination already closed for good; its error shows on the next read. */
      shutdown(dst, SHUT_WR);
      d->shut = 1;
      if (r->first_fin < 0) r->first_fin = i;
      return 0;
    }
    if (d->r < 0) {
      int err = pipe_take(r->inst, d);
      if (err != 0) {
        fail(r, i, err);
        return -1;
      }
    }
    ssize_t n = splice(src, NULL, d->w, NULL, CHUNK, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      d->fill = (size_t)n;
      if ((size_t)n < CHUNK) {
        /* A short read drained the socket: deliver, then wait for the next wake-up. */
        ssize_t m = splice(d->r, NULL, dst, NULL, d->fill, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (m > 0) {
          d->fill -= (size_t)m;
          d->bytes += (uint64_t)m;
        } else if (m < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          fail(r, 1 - i, errno);
          return -1;
        }
        if (d->fill > 0) {
          d->blocked = 1;
        } else {
          pipe_release(r->inst, d);
        }
        return 0;
      }
    } else if (n == 0) {
      d->eof = 1;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      pipe_release(r->inst, d);
      return 0;
    } else {
      fail(r, i, errno);
      return -1;
    }
  }
  return 0;
}

/* Polls each socket for what its two directions wait on. */
static int update_interest(relay *r) {
  for (int s = 0; s < 2; s++) {
    uint32_t mask = 0;
    if (!r->d[s].eof && !r->d[s].blocked) mask |= EPOLLIN;
    if (r->d[1 - s].blocked) mask |= EPOLLOUT;
    int err = set_interest(r, s, mask);
    if (err != 0) {
      fail(r, s, err);
      return -1;
    }
  }
  return 0;
}

static int socket_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
  return err;
}

static void on_connecting(relay *r, uint32_t events) {
  (void)events;
  instance *in = r->inst;
  int slot = r->slot;
  int err = socket_error(r->fd[UP]);
  if (err != 0) {
    fail(r, UP, err);
    write_stats(r);
    teardown(r);
    call_js(in, slot, EV_CONNECT_FAILED);
    return;
  }
  r->state = ST_CONNECTED;
  uint32_t gen = in->relays.gens[slot];
  call_js(in, slot, EV_CONNECTED);
  /* Not attached or given back by the callback: stop the writable reports until it is. */
  if (in->relays.items[slot] == r && in->relays.gens[slot] == gen && r->state == ST_CONNECTED) set_interest(r, UP, 0);
}

static void on_relay_event(relay *r, int s, uint32_t events) {
  if (r->mask[s] == 0) {
    /* Only EPOLLERR/EPOLLHUP arrive on a quieted socket: an error ends the relay; a hang-up
     * waits until the socket is polled again (unregistered meanwhile, so it does not repeat). */
    int err = socket_error(r->fd[s]);
    if (err != 0) {
      fail(r, s, err);
      finish(r);
    } else {
      unregister(r, s);
    }
    return;
  }
  if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && r->d[1 - s].blocked) {
    /* The direction writing to this socket may go on. */
    r->d[1 - s].blocked = 0;
    if (pump(r, 1 - s) < 0) {
      finish(r);
      return;
    }
  }
  if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && !r->d[s].eof && !r->d[s].blocked) {
    if (pump(r, s) < 0) {
      finish(r);
      return;
    }
  }
  if (r->d[DOWN].shut && r->d[UP].shut) {
    finish(r);
    return;
  }
  if (update_interest(r) < 0) finish(r);
}

/* Tells JavaScript of an accepted connection (fd >= 0) or an accept failure (fd = -errno). */
static void call_accept(instance *in, int a, int fd, const char *ip, int port) {
  int ints[3] = {a, fd, port};
  invoke(in, in->on_accept, 3, ints, ip, NULL, 0);
}

static void on_accept(instance *in, int a) {
  for (int k = 0; k < ACCEPTS; k++) {
    watched *ac = &in->acceptors.e[a];
    if (ac->fd < 0) return; /* closed by the callback */
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int fd = accept4(ac->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
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
      call_accept(in, a, -err, "", 0);
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char ip[INET6_ADDRSTRLEN];
    int port = format_addr(&ss, ip, sizeof ip);
    call_accept(in, a, fd, ip, port);
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

/* The loop says the epoll set has events: take them all, in batches. */
static void on_epoll(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  instance *in = h->data;
  struct epoll_event evs[BATCH];
  for (;;) {
    int n = epoll_wait(in->epfd, evs, BATCH, 0);
    if (n <= 0) return;
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
      if (r->state == ST_CONNECTING) {
        if (s == UP) on_connecting(r, evs[k].events);
      } else if (r->state == ST_RELAYING) {
        on_relay_event(r, s, evs[k].events);
      } else {
        unregister(r, s); /* connected, waiting for attach: nothing to do until then */
      }
    }
    if (n < BATCH) return;
  }
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
  napi_get_instance_data(env, &data);
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

/* init(onEvent: (slot, kind) => void, stats: Float64Array(8), onAccept: (id, fd, port, ip) => void,
 *      onDatagram: (listener, port, ip, payload) => void, onUdp: (flow, kind) => void)
 * (the numbers first: see invoke) */
static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  instance *in = get_instance(env);
  napi_typedarray_type type;
  size_t length;
  void *data;
  CHECK(napi_get_typedarray_info(env, argv[1], &type, &length, &data, NULL, NULL));
  if (type != napi_float64_array || length < STATS_LEN) {
    napi_throw_type_error(env, NULL, "stats must be a Float64Array of 8");
    return NULL;
  }
  if (in->on_event != NULL) {
    napi_delete_reference(env, in->on_event);
    napi_delete_reference(env, in->stats_ref);
    napi_delete_reference(env, in->on_accept);
    napi_delete_reference(env, in->on_datagram);
    napi_delete_reference(env, in->on_udp);
  }
  CHECK(napi_create_reference(env, argv[2], 1, &in->on_accept));
  CHECK(napi_create_reference(env, argv[3], 1, &in->on_datagram));
  CHECK(napi_create_reference(env, argv[4], 1, &in->on_udp));
  CHECK(napi_create_reference(env, argv[0], 1, &in->on_event));
  CHECK(napi_create_reference(env, argv[1], 1, &in->stats_ref));
  in->stats = data;
  if (in->epfd < 0) {
    in->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (in->epfd < 0) return throw_errno(env, "epoll_create1", errno, -1);
    in->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    uv_poll_init(in->loop, &in->epoll_watch, in->epfd);
    in->epoll_watch.data = in;
    uv_poll_start(&in->epoll_watch, UV_READABLE, on_epoll);
    /* Referenced only while relays or acceptors are open (update_ref). */
    uv_unref((uv_handle_t *)&in->epoll_watch);
  }
  return NULL;
}

static relay *relay_new(instance *in) {
  relay *r = calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  r->inst = in;
  r->fd[DOWN] = r->fd[UP] = -1;
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

static relay *slot_arg(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  return id_arg(env, info, &get_instance(env)->relays, want, argv);
}

/* connect(ip: string, port: number) => slot, or -errno when the connect failed at once */
static napi_value js_connect(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  instance *in = get_instance(env);
  if (in->epfd < 0) {
    napi_throw_error(env, NULL, "sluice relay: init() first");
    return NULL;
  }
  char ip[64];
  size_t iplen;
  int32_t port;
  CHECK(napi_get_value_string_utf8(env, argv[0], ip, sizeof ip, &iplen));
  CHECK(napi_get_value_int32(env, argv[1], &port));
  struct sockaddr_storage ss;
  socklen_t sslen;
  size_t max_payload;
  if (parse_addr(ip, port, &ss, &sslen, &max_payload) < 0) return int_value(env, -EINVAL);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return int_value(env, -errno);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (struct sockaddr *)&ss, sslen) < 0 && errno != EINPROGRESS) {
    int err = errno;
    close(fd);
    return int_value(env, -err);
  }
  relay *r = relay_new(in);
  if (r == NULL) {
    close(fd);
    return int_value(env, -ENOMEM);
  }
  r->fd[UP] = fd;
  r->state = ST_CONNECTING;
  int err = set_interest(r, UP, EPOLLOUT);
  if (err != 0) {
    teardown(r);
    return int_value(env, -err);
  }
  return int_value(env, r->slot);
}

/* attach(slot, clientFd, prefix?: Buffer, own?: boolean): starts relaying a connected slot; with
 * `own` the relay takes the descriptor itself (it was accept()ed by the relay) instead of a dup */
static napi_value js_attach(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  napi_get_undefined(env, &argv[3]);
  relay *r = slot_arg(env, info, 4, argv);
  if (r == NULL || r->state != ST_CONNECTED) {
    napi_throw_error(env, NULL, "sluice relay: attach() needs a connected slot");
    return NULL;
  }
  int32_t fd;
  CHECK(napi_get_value_int32(env, argv[1], &fd));
  bool is_buffer = false;
  napi_is_buffer(env, argv[2], &is_buffer);
  if (is_buffer) {
    void *bytes;
    size_t len;
    CHECK(napi_get_buffer_info(env, argv[2], &bytes, &len));
    if (len > 0) {
      r->d[DOWN].prefix = malloc(len);
      if (r->d[DOWN].prefix == NULL) return throw_errno(env, "malloc", ENOMEM, -1);
      memcpy(r->d[DOWN].prefix, bytes, len);
      r->d[DOWN].prefix_len = len;
    }
  }
  bool own = false;
  napi_get_value_bool(env, argv[3], &own);
  r->fd[DOWN] = own ? fd : fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r->fd[DOWN] < 0) {
    int err = errno;
    free(r->d[DOWN].prefix);
    r->d[DOWN].prefix = NULL;
    r->d[DOWN].prefix_len = 0;
    return throw_errno(env, "dup", err, -1); /* the slot stays connected: detach() still works */
  }
  r->state = ST_RELAYING;
  /* Send the prefix and what the client has sent so far now: no wait for a first event. */
  if (pump(r, DOWN) < 0 || update_interest(r) < 0) {
    int side = r->err_side, err = r->err_no;
    /* JavaScript still holds the client's descriptor (unless given): take ours out of the set. */
    unregister(r, DOWN);
    if (own) r->fd[DOWN] = -1; /* the caller still closes it */
    teardown(r);
    return throw_errno(env, "relay", err, side);
  }
  return NULL;
}

/* detach(slot) => the connected upstream descriptor, now JavaScript's */
static napi_value js_detach(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  relay *r = slot_arg(env, info, 1, argv);
  if (r == NULL || r->state != ST_CONNECTED) {
    napi_throw_error(env, NULL, "sluice relay: detach() needs a connected slot");
    return NULL;
  }
  unregister(r, UP);
  int fd = r->fd[UP];
  r->fd[UP] = -1;
  teardown(r);
  return int_value(env, fd);
}

/* info(slot) => true while the slot runs; fills stats */
static napi_value js_info(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  relay *r = slot_arg(env, info, 1, argv);
  napi_value result;
  if (r != NULL) write_stats(r);
  CHECK(napi_get_boolean(env, r != NULL, &result));
  return result;
}

/* abort(slot) => true if it was running; fills stats, closes its sockets, no callback */
static napi_value js_abort(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  relay *r = slot_arg(env, info, 1, argv);
  napi_value result;
  if (r != NULL) {
    write_stats(r);
    teardown(r);
  }
  CHECK(napi_get_boolean(env, r != NULL, &result));
  return result;
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
    epoll_ctl(in->epfd, EPOLL_CTL_DEL, t->e[i].fd, NULL);
    close(t->e[i].fd);
    t->e[i].fd = -1;
    t->e[i].gen++;
    if (--t->open == 0) update_ref(in);
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
  free(in->flows.items);
  free(in->flows.gens);
  free(in->flows.free);
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
