/*
 * fdpass.c - descriptor passing over Unix stream sockets (SCM_RIGHTS), for
 * the engine's hot swap: the running engine hands its listening sockets and
 * client connections to the new process (docs/operations.md, "Hot swap").
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "error.h"
#include "strata_io.h"

_Static_assert(SIO_MAX_PASSED_FDS <= 253, "SCM_MAX_FD is 253");

int32_t sio_fd_send(int32_t sock, const void *data, uint32_t length, const int32_t *fds, uint32_t fd_count)
{
    if (data == NULL || length == 0)
        return sio_fail(-EINVAL, "sio_fd_send: nothing to send (the descriptors ride on the first byte)");
    if (fd_count > SIO_MAX_PASSED_FDS || (fd_count > 0 && fds == NULL))
        return sio_fail(-EINVAL, "sio_fd_send: %u descriptors (at most %d)", fd_count, SIO_MAX_PASSED_FDS);
    union {
        char buf[CMSG_SPACE(sizeof(int) * SIO_MAX_PASSED_FDS)];
        struct cmsghdr align;
    } ctl;
    const char *p = data;
    uint32_t left = length;
    int first = 1;
    while (left > 0) {
        struct iovec iov = {.iov_base = (void *)p, .iov_len = left};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        if (first && fd_count > 0) {
            memset(ctl.buf, 0, sizeof ctl.buf);
            msg.msg_control = ctl.buf;
            msg.msg_controllen = CMSG_SPACE(sizeof(int) * fd_count);
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * fd_count);
            for (uint32_t i = 0; i < fd_count; i++)
                memcpy(CMSG_DATA(c) + i * sizeof(int), &fds[i], sizeof(int));
        }
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            return sio_fail(-e, "sio_fd_send: sendmsg: %s", strerror(e));
        }
        first = 0;
        p += n;
        left -= (uint32_t)n;
    }
    return 0;
}

int32_t sio_fd_recv(int32_t sock, void *data, uint32_t length, int32_t *fds, uint32_t max_fds, uint32_t *out_fd_count)
{
    if (data == NULL || length == 0 || out_fd_count == NULL || (max_fds > 0 && fds == NULL))
        return sio_fail(-EINVAL, "sio_fd_recv: bad arguments");
    *out_fd_count = 0;
    union {
        char buf[CMSG_SPACE(sizeof(int) * SIO_MAX_PASSED_FDS)];
        struct cmsghdr align;
    } ctl;
    char *p = data;
    uint32_t left = length, got = 0;
    int32_t status = 0;
    while (left > 0) {
        struct iovec iov = {.iov_base = p, .iov_len = left};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
        ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            status = sio_fail(-e, "sio_fd_recv: recvmsg: %s", strerror(e));
            break;
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            uint32_t k = (uint32_t)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (uint32_t i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                if (got < max_fds)
                    fds[got++] = fd;
                else {
                    close(fd);
                    status = sio_fail(-EMSGSIZE, "sio_fd_recv: more than %u descriptors came", max_fds);
                }
            }
        }
        if (msg.msg_flags & MSG_CTRUNC)
            status = sio_fail(-EMSGSIZE, "sio_fd_recv: descriptors were cut off (more than %d)", SIO_MAX_PASSED_FDS);
        if (status != 0)
            break;
        if (n == 0) {
            status = sio_fail(-EPIPE, "sio_fd_recv: the peer closed after %u of %u bytes", length - left, length);
            break;
        }
        p += n;
        left -= (uint32_t)n;
    }
    if (status != 0) {
        for (uint32_t i = 0; i < got; i++)
            close(fds[i]);
        return status;
    }
    *out_fd_count = got;
    return 0;
}

int32_t sio_fd_set_shared(int32_t fd)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0 || fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) < 0) {
        int e = errno;
        return sio_fail(-e, "sio_fd_set_shared: fcntl(%d): %s", fd, strerror(e));
    }
    return 0;
}
