#ifndef SLUICE_RELAY_H
#define SLUICE_RELAY_H

/*
 * sluice splice relay: accepts and connects TCP sessions and moves their bytes between the two
 * sockets inside the kernel (splice(2) through a pipe), so no byte crosses into JavaScript and
 * no Buffer is allocated per read.
 *
 * The sockets are watched by one epoll set of the relay's own. While it has sockets open, the
 * Node.js event loop sleeps in that set (a prepare handle waits there for as long as the loop
 * would have slept in its own poll), which also holds the loop's own epoll descriptor: the relay's
 * sockets wake the thread directly, and adding one is the plain insert into a set nothing else
 * watches, not the checked insert into a nested set. A session's two sockets are registered once
 * each, edge-triggered, for input, output and the peer's FIN (EPOLLRDHUP), and leave the set when
 * they are closed: no epoll_ctl call while a session runs. Edge-triggered means every wake-up must be
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
 * expiry and metrics, and report refusals (ICMP port unreachable) and answers after them; a QUIC
 * flow also reports each new Source Connection ID of its backend's long-header replies.
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

/* Reads per direction per turn before yielding to the rest of the loop (the relay then goes on
 * the pending list). */
#define ROUNDS 16
/* Empty pipes kept for reuse; more are closed when released. */
#define POOL_MAX 256
/* Epoll events taken per epoll_wait call. */
#define BATCH 128
/* Looks at the epoll set per turn of the loop while each look finds events (see on_wait). */
#ifndef WAKE_ROUNDS
#define WAKE_ROUNDS 4
#endif
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
/* What the UDP callback is told about a flow (UDP_SERVER_CID comes with the ID's octets). */
enum { UDP_REFUSED = 1, UDP_ANSWERED = 2, UDP_SERVER_CID = 3 };
/* Longest QUIC connection ID reported (QUIC v1 and v2 allow 20; longer ones are not learned). */
#define QUIC_CID_MAX 20

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
  uint64_t dg_in, bytes_in, dg_out, bytes_out, drop_size, drop_full, drop_amp;
  int answered;
  /* Replies allowed per datagram from the client (0: no cap), and those still allowed: each
   * datagram forwarded adds max_replies, each reply sent takes one, replies beyond are dropped. */
  uint32_t max_replies;
  uint64_t credits;
  /* QUIC: report the Source Connection ID of the backend's long-header replies, each new one
   * once (they appear during handshakes only); the last one reported. */
  int quic;
  uint8_t scid_len;
  uint8_t scid[QUIC_CID_MAX];
} udp_flow;

/* Connections accepted per wake-up of one listening socket before yielding. */
#define ACCEPTS 64
/* Event keys: generation << 32 | kind << 30 | index << 1 | side. */
#define KIND_SHIFT 30
enum { KIND_RELAY = 0, KIND_ACCEPTOR = 1, KIND_UDP_LISTENER = 2, KIND_UDP_FLOW = 3 };
/* The key of the loop's own epoll descriptor in the relay's set (no item has it: see on_wait). */
#define LOOP_KEY UINT64_MAX
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
  uv_prepare_t waiter; /* waits on the relay's set before the loop's own poll (on_wait) */
  uv_idle_t spin;      /* active while `waiter` is: the loop's own poll must not sleep */
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
  int polling;     /* inside on_wait, which hands records over at its end: no turn of its own needed */
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

/* Used by the JavaScript bindings: a failed Node-API call throws and returns. */
#define CHECK(call)                                                                                   \
  do {                                                                                                \
    if ((call) != napi_ok) {                                                                          \
      napi_throw_error(env, NULL, "sluice relay: " #call " failed");                                  \
      return NULL;                                                                                    \
    }                                                                                                 \
  } while (0)

/* ---- ids and handles, records for JavaScript, the loop handles, addresses (common.c) ---- */
int id_take(id_table *t, void *item);
void id_release(id_table *t, int id);
void id_retire(id_table *t, int id, int outcome);
void release_retired(id_table *t);
double handle_of(relay *r);
int retired_outcome(instance *in, int64_t h);
relay *relay_of(instance *in, int64_t h);
void kick(instance *in);
void update_ref(instance *in);
record *push_record(instance *in, int kind);
void invoke(instance *in, napi_ref ref, int nints, const int *ints, const char *ip, const char *data, size_t len);
void make_callback(instance *in, napi_value recv, napi_value fn, size_t argc, const napi_value *argv);
int format_addr(const struct sockaddr_storage *ss, char *ip, size_t size);
int parse_addr(const char *ip, int port, struct sockaddr_storage *ss, socklen_t *len, size_t *max_payload);
int socket_error(int fd);

/* ---- the TCP relay of one session (tcp.c) ---- */
void write_stats(relay *r);
int watch_side(relay *r, int s);
int unwatch_side(relay *r, int s);
void teardown(relay *r, int outcome);
void finish(relay *r);
void pend(relay *r);
int start_relaying(relay *r, int client);
void on_connecting(relay *r, uint32_t events);
void on_relay_event(relay *r, int s, uint32_t events);
void run_pending(instance *in);

/* ---- accepting for TCP listeners (accept.c) ---- */
void on_accept(instance *in, int a);

/* ---- UDP listeners and flows (udp.c) ---- */
void make_ukey(ukey *k, int l, const struct sockaddr_storage *ss);
int flow_table_put(instance *in, udp_flow *f);
void flow_free(instance *in, udp_flow *f);
void on_udp_listener(instance *in, int l);
void on_udp_flow(instance *in, udp_flow *f);

/* ---- the loop: epoll events in, records out (loop.c) ---- */
void on_later(uv_idle_t *h);
void on_wait(uv_prepare_t *h);
void on_spin(uv_idle_t *h);

/* ---- the JavaScript binding: init, listeners, shared helpers (binding.c) ---- */
instance *get_instance(napi_env env);
napi_value throw_errno(napi_env env, const char *what, int err, int side);
napi_value int_value(napi_env env, int64_t v);
napi_value number_value(napi_env env, double v);
void *id_arg(napi_env env, napi_callback_info info, id_table *t, size_t want, napi_value *argv);
bool copy_buffer(napi_env env, napi_value v, char **out, size_t *len);
napi_value watch_socket(napi_env env, watch_table *t, int kind, napi_callback_info info);
napi_value unwatch_socket(napi_env env, watch_table *t, napi_callback_info info);

/* ---- the JavaScript binding of TCP relays (binding-tcp.c) ---- */
napi_value js_connect(napi_env env, napi_callback_info info);
napi_value js_attach(napi_env env, napi_callback_info info);
napi_value js_detach(napi_env env, napi_callback_info info);
napi_value js_info(napi_env env, napi_callback_info info);
napi_value js_abort(napi_env env, napi_callback_info info);

/* ---- the JavaScript binding of UDP flows (binding-udp.c) ---- */
napi_value js_udp_listen(napi_env env, napi_callback_info info);
napi_value js_udp_unlisten(napi_env env, napi_callback_info info);
napi_value js_udp_flow(napi_env env, napi_callback_info info);
napi_value js_udp_send(napi_env env, napi_callback_info info);
napi_value js_udp_info(napi_env env, napi_callback_info info);
napi_value js_udp_close(napi_env env, napi_callback_info info);

#endif
