/* Accepting for the TCP listeners JavaScript bound: each connection becomes a record. */
#include "relay.h"

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

void on_accept(instance *in, int a) {
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
