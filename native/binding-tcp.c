/* The JavaScript binding of TCP relays: connect, attach, detach, info, abort. */
#include "relay.h"

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

/* connect(ip, port, clientFd = -1, prefix?: Buffer) => handle, or -errno when it failed at once.
 * With clientFd the relay attaches it once connected (until then, and after CONNECT_FAILED, the
 * descriptor stays the caller's) and sends `prefix` first. */
napi_value js_connect(napi_env env, napi_callback_info info) {
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
napi_value js_attach(napi_env env, napi_callback_info info) {
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
napi_value js_detach(napi_env env, napi_callback_info info) {
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
napi_value js_info(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  relay *r = handle_arg(env, info, 1, argv);
  if (r != NULL) write_stats(r);
  return int_value(env, r != NULL ? r->state : 0);
}

/* abort(handle) => OUTCOME_NONE (0) when it ended long ago (its record was handed over), else what
 * became of the client: 1 still the caller's, 2 closed with the relay. A relay still running ends
 * now (no record; stats filled); one that ended with its record not yet handed over only answers. */
napi_value js_abort(napi_env env, napi_callback_info info) {
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
