/* The JavaScript binding: init, watched listening sockets, helpers the other bindings share. */
#include "relay.h"

instance *get_instance(napi_env env) {
  void *data = NULL;
  if (napi_get_instance_data(env, &data) != napi_ok) return NULL;
  return data;
}

napi_value throw_errno(napi_env env, const char *what, int err, int side) {
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

napi_value int_value(napi_env env, int64_t v) {
  napi_value result;
  if (napi_create_int64(env, v, &result) != napi_ok) return NULL;
  return result;
}

napi_value number_value(napi_env env, double v) {
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
 *      onDatagram: (listener, port, ip, payload) => void, onUdp: (flow, kind, data?: Buffer) => void) */
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
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = LOOP_KEY};
    int err = epoll_ctl(epfd, EPOLL_CTL_ADD, uv_backend_fd(in->loop), &ev) < 0 ? uv_translate_sys_error(errno) : 0;
    if (err == 0) err = uv_prepare_init(in->loop, &in->waiter);
    if (err == 0) err = uv_idle_init(in->loop, &in->spin);
    if (err == 0) err = uv_idle_init(in->loop, &in->later);
    if (err != 0) {
      close(epfd);
      napi_throw_error(env, NULL, uv_strerror(err));
      return NULL;
    }
    in->waiter.data = in;
    in->spin.data = in;
    in->later.data = in;
    in->epfd = epfd;
    in->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    /* The waiter runs only while relays or acceptors are open (update_ref), and keeps the loop
     * alive then, as their sockets would; `spin` never does; `later` only while it has work. */
    uv_unref((uv_handle_t *)&in->spin);
  }
  return NULL;
}

/* The item whose id is the first argument (the others go to argv), or NULL. */
void *id_arg(napi_env env, napi_callback_info info, id_table *t, size_t want, napi_value *argv) {
  size_t argc = want;
  int32_t id;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int32(env, argv[0], &id) != napi_ok)
    return NULL;
  if (id < 0 || id >= t->n) return NULL;
  return t->items[id];
}

/* Copies a Buffer argument (undefined: none) to a malloc'ed block; false when out of memory. */
bool copy_buffer(napi_env env, napi_value v, char **out, size_t *len) {
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

/* Reads (epoll, level-triggered) a dup of a socket JavaScript bound; its index, or a throw. A
 * second argument `shared` (true: other processes watch the same socket) makes its readiness
 * wake one of their waiting relays, not all of them (EPOLLEXCLUSIVE). */
napi_value watch_socket(napi_env env, watch_table *t, int kind, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  bool shared = false;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  if (argc > 1) napi_get_value_bool(env, argv[1], &shared);
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
  if (shared) ev.events |= EPOLLEXCLUSIVE;
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
napi_value unwatch_socket(napi_env env, watch_table *t, napi_callback_info info) {
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

/* listen(fd, shared?) => id: accepts the connections of a bound, listening TCP socket */
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
