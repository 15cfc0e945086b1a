/* The JavaScript binding of UDP: listeners read by the relay and client flows. */
#include "relay.h"

/* udpListen(fd) => id: reads a bound UDP socket's datagrams in batches */
napi_value js_udp_listen(napi_env env, napi_callback_info info) {
  instance *in = get_instance(env);
  if (in->rbuf == NULL) {
    in->rbuf = malloc((size_t)UDP_BATCH * UDP_MAX);
    if (in->rbuf == NULL) return throw_errno(env, "malloc", ENOMEM, -1);
  }
  return watch_socket(env, &in->ulisteners, KIND_UDP_LISTENER, info);
}

/* udpUnlisten(id): stops reading (its flows must be closed first: replies leave from it) */
napi_value js_udp_unlisten(napi_env env, napi_callback_info info) {
  return unwatch_socket(env, &get_instance(env)->ulisteners, info);
}

/*
 * udpFlow(listener, backendIp, backendPort, header?: Buffer, maxReplies = 0, watchCids = false) => flow id,
 * or -errno. Only while JavaScript decides on a datagram from onDatagram: the flow is filed under that
 * datagram's source. With watchCids the flow reports its backend's QUIC server connection IDs.
 */
napi_value js_udp_flow(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  instance *in = get_instance(env);
  int32_t l, port, max_replies = 0;
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
  if (argc > 4) CHECK(napi_get_value_int32(env, argv[4], &max_replies));
  f->max_replies = max_replies > 0 ? (uint32_t)max_replies : 0;
  bool watch = false;
  if (argc > 5) napi_get_value_bool(env, argv[5], &watch); /* not a boolean: off */
  f->quic = watch;
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
napi_value js_udp_send(napi_env env, napi_callback_info info) {
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
  f->credits += f->max_replies;
  return int_value(env, 0);
}

/* udpInfo(flow) => true while open; fills stats with its counters */
napi_value js_udp_info(napi_env env, napi_callback_info info) {
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
    s[6] = (double)f->drop_amp;
  }
  napi_value result;
  CHECK(napi_get_boolean(env, f != NULL, &result));
  return result;
}

/* udpClose(flow): closes its upstream socket; its client's next datagram goes to JavaScript */
napi_value js_udp_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  udp_flow *f = flow_arg(env, info, 1, argv);
  if (f != NULL) flow_free(get_instance(env), f);
  return NULL;
}
