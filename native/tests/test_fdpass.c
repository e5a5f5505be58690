/*
 * test_fdpass.c - descriptor passing (SCM_RIGHTS) for the hot swap: what is
 * sent arrives whole, the descriptors received are working duplicates, and
 * every refusal says why.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

static void pair(int sv[2]) { CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0); }

TEST(fd_pass_pipe_arrives_and_works)
{
    int sv[2], p[2];
    pair(sv);
    CHECK(pipe(p) == 0);
    const char msg[] = "handoff";
    CHECK_OK(sio_fd_send(sv[0], msg, sizeof msg, &p[1], 1));
    /* The sender still owns its copy: closing it leaves the receiver's working. */
    close(p[1]);
    char back[sizeof msg];
    int32_t fds[4] = {-1, -1, -1, -1};
    uint32_t n = 99;
    CHECK_OK(sio_fd_recv(sv[1], back, sizeof back, fds, 4, &n));
    CHECK_EQ(n, 1);
    CHECK(memcmp(back, msg, sizeof msg) == 0);
    CHECK((fcntl(fds[0], F_GETFD) & FD_CLOEXEC) != 0);
    CHECK_EQ(write(fds[0], "x", 1), 1);
    char c = 0;
    CHECK_EQ(read(p[0], &c, 1), 1);
    CHECK_EQ(c, 'x');
    close(fds[0]);
    close(p[0]);
    close(sv[0]);
    close(sv[1]);
}

TEST(fd_pass_frames_keep_their_descriptors_apart)
{
    /* Two frames back to back, each with its own descriptors: exact reads give each frame its own. */
    int sv[2], a[2], b[2];
    pair(sv);
    CHECK(pipe(a) == 0);
    CHECK(pipe(b) == 0);
    int32_t both[2] = {b[0], b[1]};
    CHECK_OK(sio_fd_send(sv[0], "one", 3, &a[1], 1));
    CHECK_OK(sio_fd_send(sv[0], "two!", 4, both, 2));
    CHECK_OK(sio_fd_send(sv[0], "end", 3, NULL, 0));
    char buf[8];
    int32_t fds[4];
    uint32_t n;
    CHECK_OK(sio_fd_recv(sv[1], buf, 3, fds, 4, &n));
    CHECK_EQ(n, 1);
    CHECK(memcmp(buf, "one", 3) == 0);
    close(fds[0]);
    CHECK_OK(sio_fd_recv(sv[1], buf, 4, fds, 4, &n));
    CHECK_EQ(n, 2);
    CHECK(memcmp(buf, "two!", 4) == 0);
    close(fds[0]);
    close(fds[1]);
    CHECK_OK(sio_fd_recv(sv[1], buf, 3, fds, 4, &n));
    CHECK_EQ(n, 0);
    CHECK(memcmp(buf, "end", 3) == 0);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
    close(sv[0]);
    close(sv[1]);
}

TEST(fd_pass_large_payload_across_short_transfers)
{
    /* More than the socket buffer: the sender loops on short sends while the receiver reads. */
    int sv[2];
    pair(sv);
    int sz = 4096;
    CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz) == 0);
    enum { LEN = 1 << 20 };
    uint8_t *out = malloc(LEN), *in = malloc(LEN);
    CHECK(out != NULL && in != NULL);
    t_fill(out, LEN, 7);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        close(sv[1]);
        _exit(sio_fd_send(sv[0], out, LEN, &sv[0], 1) == 0 ? 0 : 1);
    }
    close(sv[0]);
    int32_t fd = -1;
    uint32_t n = 0;
    CHECK_OK(sio_fd_recv(sv[1], in, LEN, &fd, 1, &n));
    CHECK_EQ(n, 1);
    CHECK(memcmp(in, out, LEN) == 0);
    close(fd);
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    free(out);
    free(in);
    close(sv[1]);
}

TEST(fd_pass_refusals_say_why)
{
    int sv[2], p[2];
    pair(sv);
    CHECK(pipe(p) == 0);
    CHECK_RC(sio_fd_send(sv[0], "x", 0, NULL, 0), -EINVAL);
    CHECK_DETAIL("nothing to send");
    CHECK_RC(sio_fd_send(sv[0], "x", 1, p, SIO_MAX_PASSED_FDS + 1), -EINVAL);
    CHECK_DETAIL("descriptors");
    /* More descriptors than the receiver takes: refused, and none is left open in the receiver. */
    int32_t both[2] = {p[0], p[1]};
    CHECK_OK(sio_fd_send(sv[0], "y", 1, both, 2));
    char c;
    int32_t fd = -1;
    uint32_t n = 0;
    CHECK_RC(sio_fd_recv(sv[1], &c, 1, &fd, 1, &n), -EMSGSIZE);
    CHECK_EQ(n, 0);
    /* The peer gone before the frame is whole: -EPIPE with how much came. */
    CHECK_OK(sio_fd_send(sv[0], "ab", 2, NULL, 0));
    close(sv[0]);
    char buf[4];
    CHECK_RC(sio_fd_recv(sv[1], buf, 4, NULL, 0, &n), -EPIPE);
    CHECK_DETAIL("closed after 2 of 4 bytes");
    close(sv[1]);
    close(p[0]);
    close(p[1]);
}

TEST(fd_pass_set_shared_clears_cloexec)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    CHECK((fcntl(p[0], F_GETFD) & FD_CLOEXEC) != 0);
    CHECK_OK(sio_fd_set_shared(p[0]));
    CHECK_EQ(fcntl(p[0], F_GETFD) & FD_CLOEXEC, 0);
    close(p[0]);
    close(p[1]);
    CHECK_RC(sio_fd_set_shared(p[0]), -EBADF);
    CHECK_DETAIL("sio_fd_set_shared");
}
