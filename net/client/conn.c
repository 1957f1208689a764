/* conn.c: TCP connections to mail servers, optionally wrapped in TLS.
 *
 * The socket is non-blocking for its whole life and every wait is a poll()
 * against a deadline: that is the only way to bound connect(), the TLS
 * handshake, and OpenSSL reads and writes (each of which may need the socket
 * readable or writable, whatever the caller asked for) by a timeout.  Each
 * conn has its own SSL_CTX, so threads share nothing but OpenSSL's internal
 * state and a thread-local buffer holding the last error message.
 *
 * SIGPIPE: plaintext writes use send(MSG_NOSIGNAL), but OpenSSL's socket BIO
 * writes with write(), which raises SIGPIPE when the server has gone away.
 * The program must therefore ignore SIGPIPE: mailfs's main() calls
 * signal(SIGPIPE, SIG_IGN), and any other user of this module (the unit
 * test) has to do the same. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* the GNU strerror_r, which is thread-safe */
#endif

#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define CONN_DEFAULT_CONNECT_TIMEOUT_MS 10000
#define CONN_DEFAULT_IO_TIMEOUT_MS 30000

struct conn {
	int fd;
	SSL_CTX *ssl_ctx;
	SSL *ssl;
	/* Set (to a -errno) by a fatal TLS error or a failed handshake: the
	 * byte stream is then in an unknown state, so every later read or
	 * write returns it (falling back to plaintext after a failed STARTTLS
	 * would be a downgrade), and no close_notify is sent, which OpenSSL
	 * forbids after a fatal error. */
	int error;
	bool implicit_tls;
	bool insecure;
	char *host;
	char *hostport; /* "host:port" or "[v6]:port", for messages */
	char *cafile;
	/* The host when it is an IP literal (without a zone), else "". */
	char ip[INET6_ADDRSTRLEN];
	int port;
	int connect_timeout_ms;
	int io_timeout_ms;
	int64_t deadline_ms; /* conn_set_deadline(); 0: none */
};

static _Thread_local char conn_error_buf[512];

static void conn_set_error(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

static void conn_set_error(const char *fmt, ...)
{
	va_list args;
	char *p;

	va_start(args, fmt);
	vsnprintf(conn_error_buf, sizeof(conn_error_buf), fmt, args);
	va_end(args);
	/* The host comes from the user and certificate names from the server:
	 * whatever they hold, the message stays one line. */
	for (p = conn_error_buf; *p != '\0'; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	}
}

const char *conn_last_error(void)
{
	return conn_error_buf;
}

static const char *conn_strerror(int err, char *buf, size_t size)
{
	/* GNU strerror_r: may return a static string instead of filling buf. */
	return strerror_r(err, buf, size);
}

/* The reason of the most recent OpenSSL error of this thread. */
static const char *conn_ssl_reason(void)
{
	unsigned long e = ERR_peek_last_error();
	const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;

	return reason != NULL ? reason : "unknown error";
}

static int conn_ssl_reason_code(void)
{
	unsigned long e = ERR_peek_last_error();

	return ERR_GET_LIB(e) == ERR_LIB_SSL ? ERR_GET_REASON(e) : 0;
}

static int64_t conn_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Timeouts are quoted as the user gave them: "15", "0.3". */
static const char *conn_secs(int ms, char *buf, size_t size)
{
	snprintf(buf, size, "%g", ms / 1000.0);
	return buf;
}

/* ---- cancelling every wait, at unmount ---- */

static pthread_once_t conn_cancel_once = PTHREAD_ONCE_INIT;
static int conn_cancel_fd = -1; /* an eventfd, readable once cancelled */
static atomic_bool conn_cancelled;

static void conn_cancel_init(void)
{
	conn_cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

void conn_cancel_all(void)
{
	uint64_t one = 1;

	pthread_once(&conn_cancel_once, conn_cancel_init);
	atomic_store(&conn_cancelled, true);
	if (conn_cancel_fd >= 0 && write(conn_cancel_fd, &one, sizeof(one)) < 0)
		return; /* the flag alone still stops every later wait */
}

/* poll() on fd and the cancel eventfd: poll's result, or -ECANCELED. */
static int conn_poll(int fd, short events, int timeout_ms)
{
	struct pollfd pfd[2] = { { .fd = fd, .events = events }, { .fd = -1 } };
	int ret;

	pthread_once(&conn_cancel_once, conn_cancel_init);
	if (atomic_load(&conn_cancelled))
		return -ECANCELED;
	pfd[1].fd = conn_cancel_fd;
	pfd[1].events = POLLIN;
	ret = poll(pfd, 2, timeout_ms);
	if (ret > 0 && pfd[1].revents)
		return -ECANCELED;
	return ret;
}

int conn_wait_input(struct conn *conn, int timeout_ms)
{
	int ret = conn_poll(conn->fd, POLLIN, timeout_ms);

	if (ret < 0 && ret != -ECANCELED)
		ret = errno == EINTR ? 0 : -errno;
	return ret;
}

/* Wait until fd is ready for events or deadline passes: 0, -ETIMEDOUT,
 * -ECANCELED or -errno.  An error or hangup counts as ready; the next I/O
 * call reports it with a better errno than poll could. */
static int conn_wait(int fd, short events, int64_t deadline)
{
	int64_t left;
	int ret;

	for (;;) {
		left = deadline - conn_now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		ret = conn_poll(fd, events, left > INT_MAX ? INT_MAX : (int)left);
		if (ret > 0)
			return 0;
		if (ret == -ECANCELED)
			return ret;
		if (ret < 0 && errno != EINTR)
			return -errno;
	}
}

/* Connect one address before deadline: 0 with *fd_r, or -errno. */
static int conn_connect_addr(const struct addrinfo *ai, int64_t deadline,
			     int *fd_r)
{
	socklen_t len = sizeof(int);
	int fd, ret, err;

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    ai->ai_protocol);
	if (fd < 0)
		return -errno;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		/* After EINTR a non-blocking connect goes on in the
		 * background just as after EINPROGRESS. */
		if (errno != EINPROGRESS && errno != EINTR) {
			ret = -errno;
			goto fail;
		}
		ret = conn_wait(fd, POLLOUT, deadline);
		if (ret < 0)
			goto fail;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
			ret = -errno;
			goto fail;
		}
		if (err != 0) {
			ret = -err;
			goto fail;
		}
	}
	*fd_r = fd;
	return 0;

fail:
	close(fd);
	return ret;
}

/* Errors that only say this machine has no route for an address family
 * (an IPv6 address on an IPv4-only host): less telling than whatever
 * another address of the same host answered. */
static bool conn_err_is_unreachable(int err)
{
	return err == -ENETUNREACH || err == -EAFNOSUPPORT ||
	       err == -EADDRNOTAVAIL || err == -EHOSTUNREACH;
}

static int conn_connect(struct conn *conn)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_NUMERICSERV,
	};
	struct addrinfo *res = NULL, *ai;
	char port[16], buf[128];
	int64_t deadline, now, until;
	int ret, err = -EHOSTUNREACH, one = 1;
	int keep_idle = 120, keep_intvl = 30, keep_cnt = 4;

	snprintf(port, sizeof(port), "%d", conn->port);
	ret = getaddrinfo(conn->host, port, &hints, &res);
	if (ret != 0) {
		conn_set_error("cannot resolve %s: %s", conn->host,
			       ret == EAI_SYSTEM ?
				       conn_strerror(errno, buf, sizeof(buf)) :
				       gai_strerror(ret));
		return -1;
	}

	deadline = conn_now_ms() + conn->connect_timeout_ms;
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		/* An address that swallows packets must not use up the time
		 * of the ones after it: each but the last gets half of what
		 * is left. */
		now = conn_now_ms();
		until = ai->ai_next != NULL ? now + (deadline - now) / 2 :
					      deadline;
		ret = conn_connect_addr(ai, until, &conn->fd);
		if (ret == 0)
			break;
		if (ai == res || !conn_err_is_unreachable(ret))
			err = ret;
	}
	freeaddrinfo(res);
	if (conn->fd < 0) {
		if (err == -ETIMEDOUT)
			conn_set_error("cannot connect to %s: timed out after %s s",
				       conn->hostport,
				       conn_secs(conn->connect_timeout_ms, buf,
						 sizeof(buf)));
		else
			conn_set_error("cannot connect to %s: %s",
				       conn->hostport,
				       conn_strerror(-err, buf, sizeof(buf)));
		return -1;
	}

	/* Mail protocols are command/response with small writes: Nagle plus
	 * delayed ACKs would add latency to every command.  Keepalive lets a
	 * long IDLE notice a server that vanished without a FIN (a NAT that
	 * forgot us, a suspended laptop); Linux's default of two hours of
	 * silence before the first probe is longer than an IDLE lasts, hence
	 * the shorter times.  All optimizations: failures are no error. */
	(void)setsockopt(conn->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	(void)setsockopt(conn->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
#ifdef TCP_KEEPIDLE
	(void)setsockopt(conn->fd, IPPROTO_TCP, TCP_KEEPIDLE, &keep_idle,
			 sizeof(keep_idle));
	(void)setsockopt(conn->fd, IPPROTO_TCP, TCP_KEEPINTVL, &keep_intvl,
			 sizeof(keep_intvl));
	(void)setsockopt(conn->fd, IPPROTO_TCP, TCP_KEEPCNT, &keep_cnt,
			 sizeof(keep_cnt));
#endif
	return 0;
}

static int conn_load_cafile(SSL_CTX *ctx, const char *cafile)
{
	char buf[128];
	FILE *f;

	/* OpenSSL's own reason for a missing file is "system lib"; open it
	 * first to tell the user what errno says. */
	f = fopen(cafile, "re");
	if (f == NULL) {
		conn_set_error("cannot read CA file %s: %s", cafile,
			       conn_strerror(errno, buf, sizeof(buf)));
		return -1;
	}
	fclose(f);
	ERR_clear_error();
	if (SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1) {
		conn_set_error("cannot read CA file %s: no PEM certificate in it (%s)",
			       cafile, conn_ssl_reason());
		return -1;
	}
	/* A cafile may hold the server's own certificate rather than a root
	 * CA (pinning a certificate signed by a private CA); partial chains
	 * let any certificate in the store act as a trust anchor. */
	X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx),
				    X509_V_FLAG_PARTIAL_CHAIN);
	return 0;
}

static int conn_tls_ctx_new(struct conn *conn)
{
	SSL_CTX *ctx;

	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL) {
		conn_set_error("cannot set up TLS for %s: %s", conn->host,
			       conn_ssl_reason());
		return -1;
	}
	conn->ssl_ctx = ctx;
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
		conn_set_error("cannot set up TLS for %s: %s", conn->host,
			       conn_ssl_reason());
		return -1;
	}
	/* Partial writes report progress, which the write timeout is based
	 * on. */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
				      SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* A missing or empty system store is no error by itself: the cafile
	 * may be all this user trusts. */
	if (!conn->insecure && SSL_CTX_set_default_verify_paths(ctx) != 1)
		ERR_clear_error();
	/* Read the cafile even with insecure, so that a typo in its name is
	 * reported rather than silently ignored. */
	if (conn->cafile != NULL && conn_load_cafile(ctx, conn->cafile) < 0)
		return -1;
	SSL_CTX_set_verify(ctx, conn->insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER,
			   NULL);
	return 0;
}

/* Append a name from a certificate to buf, shown safely: a certificate
 * is server-controlled data. */
static void conn_append_name(char *buf, size_t size, const unsigned char *name,
			     int len)
{
	size_t pos = strlen(buf);
	int i;

	if (pos != 0) {
		if (pos + 2 >= size)
			return;
		memcpy(buf + pos, ", ", 2);
		pos += 2;
	}
	for (i = 0; i < len && pos + 1 < size; i++) {
		unsigned char c = name[i];

		buf[pos++] = c > 0x20 && c < 0x7f ? (char)c : '?';
	}
	buf[pos] = '\0';
}

/* The names the server's certificate is for, as the hostname check sees
 * them: its subjectAltNames, else its CN.  Returns how many.  OpenSSL
 * keeps the received chain when verification fails, though not the peer
 * certificate itself. */
static int conn_cert_names(SSL *ssl, char *buf, size_t size)
{
	STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
	GENERAL_NAMES *sans;
	X509_NAME *subject;
	X509 *cert;
	int i, count = 0, idx;

	buf[0] = '\0';
	if (chain == NULL || sk_X509_num(chain) == 0)
		return 0;
	cert = sk_X509_value(chain, 0);

	sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	for (i = 0; i < sk_GENERAL_NAME_num(sans); i++) {
		const GENERAL_NAME *gen = sk_GENERAL_NAME_value(sans, i);
		char ip[INET6_ADDRSTRLEN];
		int len;

		if (count == 4) {
			conn_append_name(buf, size, (const unsigned char *)"...", 3);
			break;
		}
		if (gen->type == GEN_DNS) {
			conn_append_name(buf, size,
					 ASN1_STRING_get0_data(gen->d.dNSName),
					 ASN1_STRING_length(gen->d.dNSName));
			count++;
		} else if (gen->type == GEN_IPADD) {
			len = ASN1_STRING_length(gen->d.iPAddress);
			if ((len != 4 && len != 16) ||
			    inet_ntop(len == 4 ? AF_INET : AF_INET6,
				      ASN1_STRING_get0_data(gen->d.iPAddress),
				      ip, sizeof(ip)) == NULL)
				continue;
			conn_append_name(buf, size, (const unsigned char *)ip,
					 (int)strlen(ip));
			count++;
		}
	}
	GENERAL_NAMES_free(sans);
	if (count > 0)
		return count;

	subject = X509_get_subject_name(cert);
	idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
	if (idx >= 0) {
		ASN1_STRING *cn = X509_NAME_ENTRY_get_data(
			X509_NAME_get_entry(subject, idx));

		conn_append_name(buf, size, ASN1_STRING_get0_data(cn),
				 ASN1_STRING_length(cn));
		count++;
	}
	return count;
}

static void conn_verify_failed(struct conn *conn, long result)
{
	const char *reason = X509_verify_cert_error_string(result);
	char names[200];
	int count;

	switch (result) {
	case X509_V_ERR_HOSTNAME_MISMATCH:
	case X509_V_ERR_IP_ADDRESS_MISMATCH:
		count = conn_cert_names(conn->ssl, names, sizeof(names));
		if (count > 0)
			conn_set_error("TLS certificate does not match %s: it is for %s (connect to %s instead)",
				       conn->host, names,
				       count == 1 ? "that name" :
						    "one of those names");
		else
			conn_set_error("TLS certificate does not match %s: it names no host (fix the server's certificate)",
				       conn->host);
		break;
	case X509_V_ERR_CERT_HAS_EXPIRED:
	case X509_V_ERR_CERT_NOT_YET_VALID:
		/* No cafile makes an expired certificate valid. */
		conn_set_error("TLS certificate of %s is not trusted: %s (check the server's certificate and this computer's clock)",
			       conn->host, reason);
		break;
	default:
		if (conn->cafile != NULL)
			conn_set_error("TLS certificate of %s is not trusted: %s (cafile %s does not vouch for it either)",
				       conn->host, reason, conn->cafile);
		else
			conn_set_error("TLS certificate of %s is not trusted: %s (use -o cafile=FILE to trust it)",
				       conn->host, reason);
		break;
	}
}

/* Describe a failed handshake.  ret is -ETIMEDOUT, another -errno from
 * poll, or 0 with ssl_err (and sys_err for SSL_ERROR_SYSCALL). */
static void conn_handshake_failed(struct conn *conn, int ret, int ssl_err,
				  int sys_err)
{
	char buf[128], secs[32], hint[96] = "";
	long result = SSL_get_verify_result(conn->ssl);
	int code = conn_ssl_reason_code();
	const char *reason;

	if (conn->implicit_tls)
		snprintf(hint, sizeof(hint), " (check that port %d speaks TLS)",
			 conn->port);

	if (ret == -ETIMEDOUT) {
		conn_set_error("TLS handshake with %s failed: timed out after %s s%s",
			       conn->host,
			       conn_secs(conn->connect_timeout_ms, secs,
					 sizeof(secs)),
			       hint);
		return;
	}
	if (ret < 0) {
		conn_set_error("TLS handshake with %s failed: %s", conn->host,
			       conn_strerror(-ret, buf, sizeof(buf)));
		return;
	}
	if (!conn->insecure && result != X509_V_OK) {
		conn_verify_failed(conn, result);
		return;
	}
	if (ssl_err == SSL_ERROR_SYSCALL) {
		/* OpenSSL 1.1.1 reports an EOF this way, with errno 0. */
		if (sys_err == 0)
			conn_set_error("TLS handshake with %s failed: connection closed by the server%s",
				       conn->host, hint);
		else
			conn_set_error("TLS handshake with %s failed: %s",
				       conn->host,
				       conn_strerror(sys_err, buf, sizeof(buf)));
		return;
	}

	reason = conn_ssl_reason();
	switch (code) {
	case SSL_R_WRONG_VERSION_NUMBER:
	case SSL_R_PACKET_LENGTH_TOO_LONG:
	case SSL_R_HTTP_REQUEST:
		/* What a plaintext greeting looks like to a TLS client. */
		conn_set_error("TLS handshake with %s failed: the server answered without TLS: %s%s",
			       conn->host, reason, hint);
		break;
	case SSL_R_UNSUPPORTED_PROTOCOL:
	case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
	case SSL_R_NO_PROTOCOLS_AVAILABLE:
	case SSL_R_WRONG_SSL_VERSION:
		conn_set_error("TLS handshake with %s failed: %s (the server offers only versions older than TLS 1.2, which mailfs refuses)",
			       conn->host, reason);
		break;
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
	case SSL_R_UNEXPECTED_EOF_WHILE_READING:
		conn_set_error("TLS handshake with %s failed: connection closed by the server%s",
			       conn->host, hint);
		break;
#endif
	default:
		conn_set_error("TLS handshake with %s failed: %s", conn->host,
			       reason);
		break;
	}
}

/* Set when conn_open() fails to reach the server or is cut off by the
 * network during the handshake (see conn_failed_on_network()). */
static __thread bool conn_net_failure;

static int conn_tls_handshake(struct conn *conn)
{
	int64_t deadline;
	int ret, ssl_err, sys_err;

	if (conn_tls_ctx_new(conn) < 0)
		return -1;
	conn->ssl = SSL_new(conn->ssl_ctx);
	if (conn->ssl == NULL || SSL_set_fd(conn->ssl, conn->fd) != 1)
		goto setup_failed;
	/* SNI carries DNS names only (RFC 6066, section 3). */
	if (conn->ip[0] == '\0' &&
	    SSL_set_tlsext_host_name(conn->ssl, conn->host) != 1)
		goto setup_failed;
	if (!conn->insecure) {
		if (conn->ip[0] != '\0') {
			if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(conn->ssl),
							  conn->ip) != 1)
				goto setup_failed;
		} else {
			SSL_set_hostflags(conn->ssl,
					  X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
			if (SSL_set1_host(conn->ssl, conn->host) != 1)
				goto setup_failed;
		}
	}

	deadline = conn_now_ms() + conn->connect_timeout_ms;
	for (;;) {
		ERR_clear_error();
		ret = SSL_connect(conn->ssl);
		sys_err = errno;
		if (ret == 1)
			return 0;
		ssl_err = SSL_get_error(conn->ssl, ret);
		if (ssl_err == SSL_ERROR_WANT_READ) {
			ret = conn_wait(conn->fd, POLLIN, deadline);
		} else if (ssl_err == SSL_ERROR_WANT_WRITE) {
			ret = conn_wait(conn->fd, POLLOUT, deadline);
		} else {
			conn->error = -EPROTO;
			/* Cut or closed under us: the network, not a
			 * certificate or protocol verdict. */
			conn_net_failure = ssl_err == SSL_ERROR_SYSCALL ||
					   ssl_err == SSL_ERROR_ZERO_RETURN;
			conn_handshake_failed(conn, 0, ssl_err, sys_err);
			return -1;
		}
		if (ret < 0) {
			conn->error = ret;
			conn_net_failure = true;
			conn_handshake_failed(conn, ret, 0, 0);
			return -1;
		}
	}

setup_failed:
	conn->error = -EPROTO;
	conn_set_error("cannot set up TLS for %s: %s", conn->host,
		       conn_ssl_reason());
	return -1;
}

static int conn_init_host(struct conn *conn, const char *host)
{
	struct in6_addr addr;
	char ip[sizeof(conn->ip)];
	size_t len;
	bool v6;

	conn->host = strdup(host);
	if (conn->host == NULL)
		return -1;

	/* An IP literal is verified against the certificate's IP SANs, and
	 * gets no SNI.  A zone ("fe80::1%eth0") is local routing, not part of
	 * the address. */
	len = strcspn(host, "%");
	if (len < sizeof(ip)) {
		memcpy(ip, host, len);
		ip[len] = '\0';
		if (inet_pton(AF_INET, ip, &addr) == 1 ||
		    inet_pton(AF_INET6, ip, &addr) == 1)
			memcpy(conn->ip, ip, len + 1);
	}

	v6 = strchr(host, ':') != NULL;
	len = strlen(host) + 16;
	conn->hostport = malloc(len);
	if (conn->hostport == NULL)
		return -1;
	snprintf(conn->hostport, len, v6 ? "[%s]:%d" : "%s:%d", host,
		 conn->port);
	return 0;
}

bool conn_failed_on_network(void)
{
	return conn_net_failure;
}

int conn_open(struct conn **conn_r, const struct conn_opts *opts,
	      const char **error_r)
{
	struct conn *conn = NULL;

	*conn_r = NULL;
	conn_net_failure = false;
	if (opts->host == NULL || opts->host[0] == '\0') {
		conn_set_error("no server host name given");
		goto fail;
	}
	if (opts->port <= 0 || opts->port > 65535) {
		conn_set_error("invalid port %d for %s (use 1 to 65535)",
			       opts->port, opts->host);
		goto fail;
	}

	conn = calloc(1, sizeof(*conn));
	if (conn == NULL)
		goto nomem;
	conn->fd = -1;
	conn->port = opts->port;
	conn->implicit_tls = opts->implicit_tls;
	conn->insecure = opts->insecure;
	conn->connect_timeout_ms = opts->connect_timeout_ms > 0 ?
					   opts->connect_timeout_ms :
					   CONN_DEFAULT_CONNECT_TIMEOUT_MS;
	conn->io_timeout_ms = opts->io_timeout_ms > 0 ?
				      opts->io_timeout_ms :
				      CONN_DEFAULT_IO_TIMEOUT_MS;
	if (conn_init_host(conn, opts->host) < 0)
		goto nomem;
	if (opts->cafile != NULL) {
		conn->cafile = strdup(opts->cafile);
		if (conn->cafile == NULL)
			goto nomem;
	}

	if (conn_connect(conn) < 0) {
		conn_net_failure = true;
		goto fail;
	}
	if (conn->implicit_tls && conn_tls_handshake(conn) < 0)
		goto fail;
	*conn_r = conn;
	return 0;

nomem:
	conn_set_error("cannot connect to %s: out of memory", opts->host);
fail:
	conn_close(&conn);
	if (error_r != NULL)
		*error_r = conn_error_buf;
	return -1;
}

int conn_starttls(struct conn *conn, const char **error_r)
{
	if (conn->ssl != NULL || conn->error != 0) {
		conn_set_error("cannot start TLS with %s: %s", conn->host,
			       conn->error != 0 ? "the connection has failed" :
						  "TLS is already on");
		goto fail;
	}
	if (conn_tls_handshake(conn) < 0) {
		/* The server expects a handshake now, whatever went wrong
		 * on this side. */
		if (conn->error == 0)
			conn->error = -EPROTO;
		goto fail;
	}
	return 0;

fail:
	if (error_r != NULL)
		*error_r = conn_error_buf;
	return -1;
}

bool conn_is_tls(const struct conn *conn)
{
	/* Not after a failed STARTTLS: nothing was protected. */
	return conn->ssl != NULL && SSL_is_init_finished(conn->ssl);
}

/* Record why I/O failed and return err (a -errno). */
static int conn_io_failed(struct conn *conn, const char *what, int err)
{
	char buf[128], secs[32];

	if (err == -ETIMEDOUT)
		conn_set_error("cannot %s %s: timed out after %s s", what,
			       conn->hostport,
			       conn_secs(conn->io_timeout_ms, secs, sizeof(secs)));
	else if (err == -EPROTO && ERR_peek_last_error() != 0)
		conn_set_error("cannot %s %s: TLS error: %s", what,
			       conn->hostport, conn_ssl_reason());
	else
		conn_set_error("cannot %s %s: %s", what, conn->hostport,
			       conn_strerror(-err, buf, sizeof(buf)));
	return err;
}

/* Map a failed SSL_read_ex/SSL_write_ex to 0 after waiting for the
 * socket, 1 for a close_notify, or a -errno. */
static int conn_tls_retry(struct conn *conn, int ssl_err, int sys_err,
			  int64_t deadline)
{
	switch (ssl_err) {
	case SSL_ERROR_WANT_READ:
		return conn_wait(conn->fd, POLLIN, deadline);
	case SSL_ERROR_WANT_WRITE:
		return conn_wait(conn->fd, POLLOUT, deadline);
	case SSL_ERROR_ZERO_RETURN:
		return 1;
	case SSL_ERROR_SYSCALL:
		/* OpenSSL 1.1.1 reports an EOF without close_notify as a
		 * syscall error with errno 0.  A missing close_notify may be
		 * a truncation attack or a crashed server: not a clean end. */
		conn->error = sys_err != 0 ? -sys_err : -ECONNRESET;
		return conn->error;
	default:
		conn->error = -EPROTO;
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
		/* OpenSSL 3's report of the same EOF. */
		if (conn_ssl_reason_code() == SSL_R_UNEXPECTED_EOF_WHILE_READING)
			conn->error = -ECONNRESET;
#endif
		return conn->error;
	}
}

static ssize_t conn_read_tls(struct conn *conn, void *buf, size_t len,
			     int64_t deadline)
{
	size_t done;
	int ret, ssl_err, sys_err;

	for (;;) {
		ERR_clear_error();
		if (SSL_read_ex(conn->ssl, buf, len, &done) == 1)
			return (ssize_t)done;
		sys_err = errno;
		ssl_err = SSL_get_error(conn->ssl, 0);
		ret = conn_tls_retry(conn, ssl_err, sys_err, deadline);
		if (ret == 1)
			return 0;
		if (ret < 0)
			return conn_io_failed(conn, "read from", ret);
	}
}

static ssize_t conn_read_plain(struct conn *conn, void *buf, size_t len,
			       int64_t deadline)
{
	ssize_t ret;

	for (;;) {
		ret = recv(conn->fd, buf, len, 0);
		if (ret >= 0)
			return ret;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return conn_io_failed(conn, "read from", -errno);
		ret = conn_wait(conn->fd, POLLIN, deadline);
		if (ret < 0)
			return conn_io_failed(conn, "read from", (int)ret);
	}
}

/* When the wait for the next byte (or progress) must end: the I/O timeout,
 * or the caller's deadline if that comes first. */
static int64_t conn_io_deadline(const struct conn *conn)
{
	int64_t d = conn_now_ms() + conn->io_timeout_ms;

	return conn->deadline_ms && conn->deadline_ms < d ? conn->deadline_ms : d;
}

ssize_t conn_read(struct conn *conn, void *buf, size_t len)
{
	int64_t deadline = conn_io_deadline(conn);

	if (conn->error != 0)
		return conn_io_failed(conn, "read from", conn->error);
	/* 0 would read as EOF. */
	if (len == 0)
		return conn_io_failed(conn, "read from", -EINVAL);
	if (len > SSIZE_MAX)
		len = SSIZE_MAX;
	if (conn->ssl != NULL)
		return conn_read_tls(conn, buf, len, deadline);
	return conn_read_plain(conn, buf, len, deadline);
}

int conn_write(struct conn *conn, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	int64_t deadline = conn_io_deadline(conn);
	size_t done;
	ssize_t sent;
	int ret, ssl_err, sys_err;

	if (conn->error != 0)
		return conn_io_failed(conn, "write to", conn->error);
	while (len > 0) {
		if (conn->ssl != NULL) {
			ERR_clear_error();
			if (SSL_write_ex(conn->ssl, p, len, &done) == 1) {
				p += done;
				len -= done;
				deadline = conn_io_deadline(conn);
				continue;
			}
			sys_err = errno;
			ssl_err = SSL_get_error(conn->ssl, 0);
			ret = conn_tls_retry(conn, ssl_err, sys_err, deadline);
			/* A close_notify while writing: the server has
			 * stopped listening. */
			if (ret == 1)
				ret = conn->error = -EPIPE;
		} else {
			sent = send(conn->fd, p, len, MSG_NOSIGNAL);
			if (sent >= 0) {
				p += sent;
				len -= (size_t)sent;
				deadline = conn_io_deadline(conn);
				continue;
			}
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				ret = conn_wait(conn->fd, POLLOUT, deadline);
			else
				ret = -errno;
		}
		if (ret < 0)
			return conn_io_failed(conn, "write to", ret);
	}
	return 0;
}

bool conn_has_input(struct conn *conn)
{
	struct pollfd pfd = { .fd = conn->fd, .events = POLLIN };
	unsigned char byte;
	size_t done;
	int ssl_err, sys_err;

	/* A read on a failed conn returns at once, with its error. */
	if (conn->error != 0)
		return true;
	if (conn->ssl == NULL)
		return poll(&pfd, 1, 0) > 0;
	if (SSL_pending(conn->ssl) > 0)
		return true;
	/* A readable socket may hold only TLS records without application
	 * data (TLS 1.3 session tickets arrive after the handshake).  A
	 * peek on the non-blocking socket processes them without waiting. */
	ERR_clear_error();
	if (SSL_peek_ex(conn->ssl, &byte, 1, &done) == 1)
		return true;
	sys_err = errno;
	ssl_err = SSL_get_error(conn->ssl, 0);
	if (ssl_err == SSL_ERROR_WANT_READ || ssl_err == SSL_ERROR_WANT_WRITE)
		return false;
	/* EOF or an error, which the next read returns without blocking:
	 * keep it in conn->error, as OpenSSL may not report it twice. */
	(void)conn_tls_retry(conn, ssl_err, sys_err, 0);
	ERR_clear_error();
	return true;
}

int conn_fd(const struct conn *conn)
{
	return conn->fd;
}

void conn_set_io_timeout(struct conn *conn, int ms)
{
	conn->io_timeout_ms = ms > 0 ? ms : CONN_DEFAULT_IO_TIMEOUT_MS;
}

void conn_set_deadline(struct conn *conn, int64_t monotonic_ms)
{
	conn->deadline_ms = monotonic_ms > 0 ? monotonic_ms : 0;
}

void conn_close(struct conn **connp)
{
	struct conn *conn;

	if (connp == NULL || *connp == NULL)
		return;
	conn = *connp;
	*connp = NULL;

	if (conn->ssl != NULL) {
		/* One non-blocking try: close_notify tells the server the end
		 * is deliberate, but is not worth a wait on a server that
		 * has gone. */
		if (conn->error == 0 && SSL_is_init_finished(conn->ssl))
			(void)SSL_shutdown(conn->ssl);
		SSL_free(conn->ssl);
		/* Leave no stale error for this thread's next OpenSSL call. */
		ERR_clear_error();
	}
	SSL_CTX_free(conn->ssl_ctx);
	if (conn->fd >= 0)
		close(conn->fd);
	free(conn->host);
	free(conn->hostport);
	free(conn->cafile);
	free(conn);
}
