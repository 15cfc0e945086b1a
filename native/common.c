/* Ids with generations, records queued for JavaScript, the loop handles, socket addresses. */
#include "relay.h"

/* Takes a free id for `item` (growing the table as needed); -1 when out of memory or ids. */
int id_take(id_table *t, void *item) {
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

void id_release(id_table *t, int id) {
  t->items[id] = NULL;
  t->gens[id]++;
  t->free[t->nfree++] = id;
}

/* Ends an item whose last record is queued: its events are dropped from now on (generation), but
 * its id waits for release_retired(), so the record cannot be taken for one of the next item. */
void id_retire(id_table *t, int id, int outcome) {
  t->items[id] = NULL;
  t->gens[id]++;
  t->outcome[id] = (uint8_t)outcome;
  t->retired[t->nretired++] = id;
}

/* Every queued record has been handed over: retired ids may be taken again. */
void release_retired(id_table *t) {
  for (int k = 0; k < t->nretired; k++) {
    int id = t->retired[k];
    t->outcome[id] = OUTCOME_NONE;
    t->free[t->nfree++] = id;
  }
  t->nretired = 0;
}

double handle_of(relay *r) {
  return (double)(r->inst->relays.gens[r->slot] & HANDLE_GEN_MASK) * HANDLE_SLOTS + r->slot;
}

/* The outcome of the relay a handle named when it ended with its record still queued, else NONE. */
int retired_outcome(instance *in, int64_t h) {
  if (h < 0) return OUTCOME_NONE;
  int64_t slot = h & (HANDLE_SLOTS - 1);
  uint32_t gen = (uint32_t)(h >> HANDLE_SLOT_BITS);
  if (slot >= in->relays.n || in->relays.items[slot] != NULL) return OUTCOME_NONE;
  if (((in->relays.gens[slot] - 1) & HANDLE_GEN_MASK) != gen) return OUTCOME_NONE;
  return in->relays.outcome[slot];
}

/* The relay a handle names, or NULL when it has ended (whatever now holds its slot). */
relay *relay_of(instance *in, int64_t h) {
  if (h < 0) return NULL;
  int64_t slot = h & (HANDLE_SLOTS - 1);
  uint32_t gen = (uint32_t)(h >> HANDLE_SLOT_BITS);
  if (slot >= in->relays.n || (in->relays.gens[slot] & HANDLE_GEN_MASK) != gen) return NULL;
  return in->relays.items[slot];
}

/* Makes sure the loop's next turn comes round soon for queued records or pending relays. */
void kick(instance *in) {
  if (in->later_on) return;
  if (uv_idle_start(&in->later, on_later) == 0) in->later_on = 1;
}

/*
 * Waits on the relay's set (on_wait) while relays, acceptors or flows are open, and keeps the
 * process alive then, as their sockets would; leaves the loop to its own poll otherwise.
 */
void update_ref(instance *in) {
  int open = in->relays_open + in->acceptors.open + in->ulisteners.open + in->flows_open > 0;
  int waiting = uv_is_active((uv_handle_t *)&in->waiter);
  if (open && !waiting) {
    uv_prepare_start(&in->waiter, on_wait);
    uv_idle_start(&in->spin, on_spin);
  } else if (!open && waiting) {
    uv_prepare_stop(&in->waiter);
    uv_idle_stop(&in->spin);
  }
}

/* Queues a record for JavaScript; the loop hands the queue over at the end of this turn. */
record *push_record(instance *in, int kind) {
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
  /* Records queued while the loop reads the epoll set are handed over at the end of that read;
   * others (queued by a call from JavaScript) need a turn of their own. */
  if (!in->polling || in->dispatching) kick(in);
  return rec;
}

/*
 * Calls a JavaScript callback from the loop with up to four arguments: int32 numbers, then
 * optionally a latin1 string and a Buffer copy (ip, data: NULL for none). napi_make_callback
 * wants an object as `this`, and drains the microtask and tick queues; a throw is the process's
 * uncaught exception, as from any other callback.
 */
void invoke(instance *in, napi_ref ref, int nints, const int *ints, const char *ip, const char *data,
                   size_t len) {
  napi_env env = in->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn, recv, argv[4];
  size_t argc = 0;
  bool ok = napi_get_reference_value(env, ref, &fn) == napi_ok && napi_get_global(env, &recv) == napi_ok;
  for (int i = 0; ok && i < nints; i++) ok = napi_create_int32(env, ints[i], &argv[argc++]) == napi_ok;
  if (ok && ip != NULL) ok = napi_create_string_latin1(env, ip, NAPI_AUTO_LENGTH, &argv[argc++]) == napi_ok;
  void *copy;
  if (ok && data != NULL) ok = napi_create_buffer_copy(env, len, data, &copy, &argv[argc++]) == napi_ok;
  if (ok) make_callback(in, recv, fn, argc, argv);
  napi_close_handle_scope(env, scope);
}

/* Calls fn from the loop; a throw becomes the process's uncaught exception, as from any callback. */
void make_callback(instance *in, napi_value recv, napi_value fn, size_t argc, const napi_value *argv) {
  napi_env env = in->env;
  napi_value result;
  napi_make_callback(env, in->async, recv, fn, argc, argv, &result);
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err);
  }
}

/* Writes a socket address as text and its port; "" and 0 for other families. */
int format_addr(const struct sockaddr_storage *ss, char *ip, size_t size) {
  ip[0] = 0;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    if (inet_ntop(AF_INET, &a->sin_addr, ip, (socklen_t)size) == NULL) ip[0] = 0;
    return ntohs(a->sin_port);
  }
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    /* An IPv4 client of a dual-stack socket is written as IPv4 (1.2.3.4, not ::ffff:1.2.3.4). */
    const void *addr = &a->sin6_addr;
    int family = AF_INET6;
    if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
      addr = &a->sin6_addr.s6_addr[12];
      family = AF_INET;
    }
    if (inet_ntop(family, addr, ip, (socklen_t)size) == NULL) ip[0] = 0;
    return ntohs(a->sin6_port);
  }
  return 0;
}

/* Parses an IP literal and port; the largest payload of a datagram to it; -1 when not an IP. */
int parse_addr(const char *ip, int port, struct sockaddr_storage *ss, socklen_t *len, size_t *max_payload) {
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

int socket_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
  return err;
}
