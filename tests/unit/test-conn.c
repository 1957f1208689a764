/* test-conn.c: conn against servers running in threads of this process.
 *
 * Certificates are made here with the OpenSSL API and written to temporary
 * PEM files; every server listens on an ephemeral port of 127.0.0.1 (or ::1)
 * and serves one connection in the way its mode says.  Nothing leaves the
 * loopback interface: the unresolvable name is one glibc refuses before
 * asking DNS (a label over 63 bytes), so no query reaches a name server.
 *
 * conn.c relies on the program ignoring SIGPIPE, so main() does. */
#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "check.h"

#define BULK_SIZE (1024 * 1024)
#define SERVER_WAIT_MS 10000

struct cert {
	EVP_PKEY *key;
	X509 *x509;
	char path[256];
};

enum server_mode {
	SERVER_ECHO,       /* TLS, echo until EOF */
	SERVER_BULK,       /* TLS, read BULK_SIZE bytes, send them back */
	SERVER_STARTTLS,   /* plaintext until "STARTTLS", then TLS echo */
	SERVER_SILENT,     /* accept, say nothing until the client goes */
	SERVER_BYE_NOTIFY, /* TLS, "bye", close_notify, close */
	SERVER_BYE_ABRUPT, /* TLS, "bye", close without close_notify */
	SERVER_PLAIN_BYE,  /* plaintext "bye", close */
	SERVER_GREET,      /* plaintext greeting, then silence */
	SERVER_STUCK,      /* read nothing until server_stop() */
	SERVER_TLS_STUCK,  /* TLS handshake, then the same */
};

struct server {
	int lfd;
	int port;
	enum server_mode mode;
	SSL_CTX *ctx;
	int stop[2]; /* server_stop() writes to stop[1] */
	pthread_t thread;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Check a message: it must be one line.  TEST_CONN_VERBOSE=1 prints it,
 * for a person to judge. */
static bool starts_with(const char *s, const char *prefix)
{
	if (s != NULL && getenv("TEST_CONN_VERBOSE") != NULL)
		printf("  %s\n", s);
	if (s != NULL && strchr(s, '\n') != NULL)
		return false;
	return s != NULL && strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool contains(const char *s, const char *part)
{
	return s != NULL && strstr(s, part) != NULL;
}

/* ---- certificates ---- */

static EVP_PKEY *make_key(void)
{
	EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, NULL);
	EVP_PKEY *key = NULL;

	if (pctx != NULL && EVP_PKEY_keygen_init(pctx) == 1 &&
	    EVP_PKEY_CTX_set_ec_paramgen_curve_nid(pctx,
						   NID_X9_62_prime256v1) == 1)
		(void)EVP_PKEY_keygen(pctx, &key);
	EVP_PKEY_CTX_free(pctx);
	return key;
}

static int add_ext(X509 *x509, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ret;

	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, x509, x509, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (ext == NULL)
		return -1;
	ret = X509_add_ext(x509, ext, -1) == 1 ? 0 : -1;
	X509_EXTENSION_free(ext);
	return ret;
}

/* A self-signed certificate for cn with subjectAltName san, and
 * basicConstraints bc unless NULL, written to a temporary PEM file. */
static int make_cert(struct cert *cert, const char *cn, const char *san,
		     const char *bc, long serial)
{
	const char *tmpdir = getenv("TMPDIR");
	X509_NAME *name;
	FILE *f;
	int fd;

	memset(cert, 0, sizeof(*cert));
	cert->key = make_key();
	cert->x509 = X509_new();
	if (cert->key == NULL || cert->x509 == NULL)
		return -1;
	if (X509_set_version(cert->x509, 2) != 1 ||
	    ASN1_INTEGER_set(X509_get_serialNumber(cert->x509), serial) != 1 ||
	    X509_gmtime_adj(X509_getm_notBefore(cert->x509), -3600) == NULL ||
	    X509_gmtime_adj(X509_getm_notAfter(cert->x509), 86400) == NULL ||
	    X509_set_pubkey(cert->x509, cert->key) != 1)
		return -1;
	name = X509_get_subject_name(cert->x509);
	if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
				       (const unsigned char *)cn, -1, -1,
				       0) != 1 ||
	    X509_set_issuer_name(cert->x509, name) != 1)
		return -1;
	if (add_ext(cert->x509, NID_subject_alt_name, san) < 0)
		return -1;
	if (bc != NULL && add_ext(cert->x509, NID_basic_constraints, bc) < 0)
		return -1;
	if (X509_sign(cert->x509, cert->key, EVP_sha256()) == 0)
		return -1;

	snprintf(cert->path, sizeof(cert->path), "%s/test-conn-XXXXXX",
		 tmpdir != NULL ? tmpdir : "/tmp");
	fd = mkstemp(cert->path);
	if (fd < 0)
		return -1;
	f = fdopen(fd, "w");
	if (f == NULL) {
		close(fd);
		return -1;
	}
	if (PEM_write_X509(f, cert->x509) != 1) {
		fclose(f);
		return -1;
	}
	return fclose(f) == 0 ? 0 : -1;
}

static void free_cert(struct cert *cert)
{
	if (cert->path[0] != '\0')
		unlink(cert->path);
	X509_free(cert->x509);
	EVP_PKEY_free(cert->key);
}

static SSL_CTX *server_ctx(const struct cert *cert, int max_version)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (ctx == NULL)
		return NULL;
	if (SSL_CTX_use_certificate(ctx, cert->x509) != 1 ||
	    SSL_CTX_use_PrivateKey(ctx, cert->key) != 1)
		goto fail;
	if (max_version != 0) {
		/* Versions below TLS 1.2 need security level 0. */
		SSL_CTX_set_security_level(ctx, 0);
		if (SSL_CTX_set_min_proto_version(ctx, max_version) != 1 ||
		    SSL_CTX_set_max_proto_version(ctx, max_version) != 1)
			goto fail;
	}
	return ctx;

fail:
	SSL_CTX_free(ctx);
	return NULL;
}

/* ---- servers ---- */

static void server_tls_echo(SSL *ssl)
{
	char buf[16384];
	size_t n, w;

	while (SSL_read_ex(ssl, buf, sizeof(buf), &n) == 1) {
		if (SSL_write_ex(ssl, buf, n, &w) != 1)
			break;
	}
}

static void server_tls_bulk(SSL *ssl)
{
	unsigned char *buf = malloc(BULK_SIZE);
	size_t have = 0, n;

	if (buf == NULL)
		return;
	while (have < BULK_SIZE &&
	       SSL_read_ex(ssl, buf + have, BULK_SIZE - have, &n) == 1)
		have += n;
	if (have == BULK_SIZE)
		(void)SSL_write_ex(ssl, buf, BULK_SIZE, &n);
	/* Wait for the client's close so that nothing is cut off. */
	(void)SSL_read_ex(ssl, buf, 1, &n);
	free(buf);
}

/* Read one line of plaintext byte by byte, so that nothing of the TLS
 * handshake behind it is consumed. */
static bool server_read_line(int fd, char *buf, size_t size)
{
	size_t len = 0;
	char c;

	while (len + 1 < size && recv(fd, &c, 1, 0) == 1) {
		buf[len++] = c;
		if (c == '\n') {
			buf[len] = '\0';
			return true;
		}
	}
	return false;
}

static void server_serve(struct server *srv, int fd)
{
	bool tls = srv->mode != SERVER_SILENT && srv->mode != SERVER_PLAIN_BYE &&
		   srv->mode != SERVER_GREET && srv->mode != SERVER_STUCK;
	struct pollfd pfd = { .fd = srv->stop[0], .events = POLLIN };
	char line[64];
	SSL *ssl = NULL;
	size_t n;

	switch (srv->mode) {
	case SERVER_GREET:
		(void)send(fd, "* OK hello\r\n", 12, MSG_NOSIGNAL);
		/* fall through */
	case SERVER_SILENT:
		/* Until the client closes: closing with unread input would
		 * reset the connection, and the client might see that
		 * instead of what it is meant to see. */
		while (recv(fd, line, sizeof(line), 0) > 0)
			;
		return;
	case SERVER_PLAIN_BYE:
		(void)send(fd, "bye\r\n", 5, MSG_NOSIGNAL);
		return;
	case SERVER_STUCK:
		(void)poll(&pfd, 1, SERVER_WAIT_MS);
		return;
	case SERVER_STARTTLS:
		(void)send(fd, "* OK hello\r\n", 12, MSG_NOSIGNAL);
		if (!server_read_line(fd, line, sizeof(line)) ||
		    strcmp(line, "STARTTLS\r\n") != 0)
			return;
		(void)send(fd, "OK go\r\n", 7, MSG_NOSIGNAL);
		break;
	default:
		break;
	}
	if (!tls)
		return;

	ssl = SSL_new(srv->ctx);
	if (ssl == NULL || SSL_set_fd(ssl, fd) != 1 || SSL_accept(ssl) != 1)
		goto out;
	switch (srv->mode) {
	case SERVER_ECHO:
	case SERVER_STARTTLS:
		server_tls_echo(ssl);
		break;
	case SERVER_BULK:
		server_tls_bulk(ssl);
		break;
	case SERVER_BYE_NOTIFY:
		if (SSL_write_ex(ssl, "bye\r\n", 5, &n) == 1)
			(void)SSL_shutdown(ssl);
		break;
	case SERVER_BYE_ABRUPT:
		(void)SSL_write_ex(ssl, "bye\r\n", 5, &n);
		break;
	case SERVER_TLS_STUCK:
		(void)poll(&pfd, 1, SERVER_WAIT_MS);
		break;
	default:
		break;
	}
out:
	SSL_free(ssl);
	ERR_clear_error();
}

static void *server_main(void *arg)
{
	struct server *srv = arg;
	struct pollfd pfd = { .fd = srv->lfd, .events = POLLIN };
	struct timeval tv = { .tv_sec = SERVER_WAIT_MS / 1000 };
	int fd;

	/* Bounded waits everywhere, so that a broken client cannot hang the
	 * test. */
	if (poll(&pfd, 1, SERVER_WAIT_MS) != 1)
		return NULL;
	fd = accept(srv->lfd, NULL, NULL);
	if (fd < 0)
		return NULL;
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	server_serve(srv, fd);
	close(fd);
	return NULL;
}

/* Listen on an ephemeral port of 127.0.0.1 (or ::1) and serve one
 * connection in a thread. */
static int server_start(struct server *srv, enum server_mode mode,
			SSL_CTX *ctx, bool v6)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
	socklen_t len;

	memset(srv, 0, sizeof(*srv));
	memset(&ss, 0, sizeof(ss));
	srv->mode = mode;
	srv->ctx = ctx;
	if (pipe2(srv->stop, O_CLOEXEC) < 0) {
		srv->lfd = -1;
		return -1;
	}
	srv->lfd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (srv->lfd < 0)
		goto fail;
	if (v6) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_addr = in6addr_loopback;
		len = sizeof(*sin6);
	} else {
		sin->sin_family = AF_INET;
		sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		len = sizeof(*sin);
	}
	if (bind(srv->lfd, (struct sockaddr *)&ss, len) < 0 ||
	    listen(srv->lfd, 4) < 0 ||
	    getsockname(srv->lfd, (struct sockaddr *)&ss, &len) < 0)
		goto fail;
	srv->port = ntohs(v6 ? sin6->sin6_port : sin->sin_port);
	if (pthread_create(&srv->thread, NULL, server_main, srv) != 0)
		goto fail;
	return 0;

fail:
	if (srv->lfd >= 0)
		close(srv->lfd);
	srv->lfd = -1;
	close(srv->stop[0]);
	close(srv->stop[1]);
	return -1;
}

static void server_stop(struct server *srv)
{
	if (srv->lfd < 0)
		return;
	(void)write(srv->stop[1], "", 1);
	pthread_join(srv->thread, NULL);
	close(srv->lfd);
	close(srv->stop[0]);
	close(srv->stop[1]);
	srv->lfd = -1;
}

/* A port on which nothing listens: bound and closed again. */
static int closed_port(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	int fd, port = -1;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sin, &len) == 0)
		port = ntohs(sin.sin_port);
	close(fd);
	return port;
}

/* ---- client helpers ---- */

static struct conn_opts opts_for(const char *host, int port, bool tls,
				 const char *cafile)
{
	struct conn_opts opts = {
		.host = host,
		.port = port,
		.implicit_tls = tls,
		.cafile = cafile,
		.connect_timeout_ms = 5000,
		.io_timeout_ms = 5000,
	};

	return opts;
}

/* Read exactly len bytes: 0, or what conn_read returned instead. */
static ssize_t read_full(struct conn *conn, void *buf, size_t len)
{
	unsigned char *p = buf;
	ssize_t n;

	while (len > 0) {
		n = conn_read(conn, p, len);
		if (n <= 0)
			return n == 0 ? -1000 : n;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static bool echo_ok(struct conn *conn, const char *msg)
{
	char buf[256];
	size_t len = strlen(msg);

	if (conn_write(conn, msg, len) != 0 || read_full(conn, buf, len) != 0)
		return false;
	return memcmp(buf, msg, len) == 0;
}

/* Open a TLS connection to a fresh server of mode; returns what conn_open
 * returned, with the conn in *conn_r. */
static int open_tls(struct server *srv, struct conn **conn_r,
		    enum server_mode mode, SSL_CTX *ctx, const char *host,
		    const char *cafile, const char **error_r)
{
	struct conn_opts opts;

	*conn_r = NULL;
	*error_r = NULL;
	if (server_start(srv, mode, ctx, false) < 0)
		return -2;
	opts = opts_for(host, srv->port, true, cafile);
	return conn_open(conn_r, &opts, error_r);
}

/* ---- tests ---- */

static struct cert cert_a; /* 127.0.0.1, ::1, localhost; no basicConstraints */
static struct cert cert_b; /* other.example; CA:FALSE */
static struct cert cert_c; /* localhost; CA:TRUE, as "openssl req -x509" */
static SSL_CTX *ctx_a, *ctx_b, *ctx_c;

static void test_trusted_cafile(void)
{
	struct server srv;
	struct conn *conn;
	const char *error;
	char c;
	int ret;

	ret = open_tls(&srv, &conn, SERVER_ECHO, ctx_a, "127.0.0.1",
		       cert_a.path, &error);
	CHECK(ret == 0);
	if (ret == 0) {
		CHECK(conn_is_tls(conn));
		CHECK(conn_fd(conn) >= 0);
		CHECK(!conn_has_input(conn));
		CHECK(echo_ok(conn, "hello\r\n"));
		CHECK(echo_ok(conn, "a second line\r\n"));

		/* Bytes OpenSSL holds already decrypted are input too, with
		 * nothing left on the socket. */
		CHECK(conn_write(conn, "xyz", 3) == 0);
		CHECK(conn_read(conn, &c, 1) == 1 && c == 'x');
		CHECK(conn_has_input(conn));
		CHECK(read_full(conn, &c, 1) == 0 && c == 'y');
		CHECK(read_full(conn, &c, 1) == 0 && c == 'z');
		CHECK(!conn_has_input(conn));
	} else {
		fprintf(stderr, "  error: %s\n", error);
	}
	conn_close(&conn);
	CHECK(conn == NULL);
	server_stop(&srv);
}

static void test_bulk(void)
{
	unsigned char *out = malloc(BULK_SIZE), *in = malloc(BULK_SIZE);
	struct server srv;
	struct conn *conn;
	const char *error;
	size_t i;
	int ret;

	if (out == NULL || in == NULL)
		goto out;
	for (i = 0; i < BULK_SIZE; i++)
		out[i] = (unsigned char)(i * 7 + (i >> 12));
	ret = open_tls(&srv, &conn, SERVER_BULK, ctx_a, "127.0.0.1",
		       cert_a.path, &error);
	CHECK(ret == 0);
	if (ret == 0) {
		CHECK(conn_write(conn, out, BULK_SIZE) == 0);
		CHECK(read_full(conn, in, BULK_SIZE) == 0);
		CHECK(memcmp(in, out, BULK_SIZE) == 0);
	}
	conn_close(&conn);
	server_stop(&srv);
out:
	free(out);
	free(in);
}

static void test_untrusted(void)
{
	struct server srv;
	struct conn *conn;
	const char *error;
	int ret;

	ret = open_tls(&srv, &conn, SERVER_ECHO, ctx_a, "127.0.0.1", NULL,
		       &error);
	CHECK(ret == -1);
	CHECK(conn == NULL);
	CHECK(starts_with(error,
			  "TLS certificate of 127.0.0.1 is not trusted: self"));
	CHECK(contains(error, "(use -o cafile=FILE to trust it)"));
	CHECK_STR(conn_last_error(), error);
	server_stop(&srv);

	/* A cafile that is not the server's certificate does not help. */
	ret = open_tls(&srv, &conn, SERVER_ECHO, ctx_a, "127.0.0.1",
		       cert_b.path, &error);
	CHECK(ret == -1);
	CHECK(starts_with(error, "TLS certificate of 127.0.0.1 is not trusted: "));
	server_stop(&srv);
}

static void test_dns_name(void)
{
	struct server srv;
	struct conn *conn;
	const char *error;
	int ret;

	ret = open_tls(&srv, &conn, SERVER_ECHO, ctx_a, "localhost",
		       cert_a.path, &error);
	CHECK(ret == 0);
	if (ret == 0)
		CHECK(echo_ok(conn, "by name\n"));
	conn_close(&conn);
	server_stop(&srv);

	ret = open_tls(&srv, &conn, SERVER_ECHO, ctx_c, "localhost",
		       cert_c.path, &error);
	CHECK(ret == 0);
	if (ret == 0)
		CHECK(echo_ok(conn, "CA:TRUE\n"));
	else
		fprintf(stderr, "  error: %s\n", error);
	conn_close(&conn);
	server_stop(&srv);
}

static void test_ipv6(void)
{
	struct conn_opts opts;
	struct server srv;
	struct conn *conn = NULL;
	const char *error = NULL;
	int ret;

	if (server_start(&srv, SERVER_ECHO, ctx_a, true) < 0) {
		printf("skip: no ::1\n");
		return;
	}
	opts = opts_for("::1", srv.port, true, cert_a.path);
	ret = conn_open(&conn, &opts, &error);
	CHECK(ret == 0);
	if (ret == 0)
		CHECK(echo_ok(conn, "six\n"));
	else
		fprintf(stderr, "  error: %s\n", error);
	conn_close(&conn);
	server_stop(&srv);
}

static void test_mismatch(void)
{
	struct server srv;
	struct conn *conn;
	const char *error;
	int ret;

	ret = open_tls(&srv, &conn, SERVER_ECHO, ctx_b, "127.0.0.1",
		       cert_b.path, &error);
	CHECK(ret == -1);
	CHECK(starts_with(error,
			  "TLS certificate does not match 127.0.0.1: it is for other.example"));
	server_stop(&srv);

	ret = open_tls(&srv, &conn, SERVER_ECHO, ctx_b, "localhost",
		       cert_b.path, &error);
	CHECK(ret == -1);
	CHECK(starts_with(error,
			  "TLS certificate does not match localhost: it is for other.example"));
	CHECK(strchr(error, '\n') == NULL);
	server_stop(&srv);
}

static void test_insecure(void)
{
	struct conn_opts opts;
	struct server srv;
	struct conn *conn = NULL;
	const char *error;
	int ret;

	CHECK(server_start(&srv, SERVER_ECHO, ctx_b, false) == 0);
	opts = opts_for("127.0.0.1", srv.port, true, NULL);
	opts.insecure = true;
	ret = conn_open(&conn, &opts, &error);
	CHECK(ret == 0);
	if (ret == 0) {
		CHECK(conn_is_tls(conn));
		CHECK(echo_ok(conn, "no checks\n"));
	}
	conn_close(&conn);
	server_stop(&srv);
}

static void test_starttls(const char *cafile, bool want_ok)
{
	struct conn_opts opts;
	struct server srv;
	struct conn *conn = NULL;
	const char *error = NULL;
	char buf[64];
	int ret;

	CHECK(server_start(&srv, SERVER_STARTTLS, ctx_a, false) == 0);
	opts = opts_for("127.0.0.1", srv.port, false, cafile);
	ret = conn_open(&conn, &opts, &error);
	CHECK(ret == 0);
	if (ret != 0)
		goto out;
	CHECK(!conn_is_tls(conn));
	CHECK(read_full(conn, buf, 12) == 0 && memcmp(buf, "* OK hello\r\n", 12) == 0);
	CHECK(conn_write(conn, "STARTTLS\r\n", 10) == 0);
	CHECK(read_full(conn, buf, 7) == 0 && memcmp(buf, "OK go\r\n", 7) == 0);
	ret = conn_starttls(conn, &error);
	if (want_ok) {
		CHECK(ret == 0);
		CHECK(conn_is_tls(conn));
		CHECK(echo_ok(conn, "secret\r\n"));
		/* Twice is a caller's mistake, reported as such. */
		CHECK(conn_starttls(conn, &error) == -1);
		CHECK(contains(error, "already"));
	} else {
		CHECK(ret == -1);
		CHECK(starts_with(error, "TLS certificate of 127.0.0.1 is not trusted: "));
		CHECK(!conn_is_tls(conn));
		/* No falling back to plaintext after a failed upgrade. */
		CHECK(conn_write(conn, "x", 1) < 0);
		CHECK(conn_read(conn, buf, 1) < 0);
	}
out:
	conn_close(&conn);
	server_stop(&srv);
}

static void test_refused(void)
{
	struct conn_opts opts;
	struct conn *conn = NULL;
	const char *error = NULL;
	char want[128];
	int port = closed_port();

	CHECK(port > 0);
	opts = opts_for("127.0.0.1", port, true, NULL);
	CHECK(conn_open(&conn, &opts, &error) == -1);
	CHECK(conn == NULL);
	snprintf(want, sizeof(want),
		 "cannot connect to 127.0.0.1:%d: Connection refused", port);
	CHECK_STR(error, want);

	opts = opts_for("::1", port, false, NULL);
	CHECK(conn_open(&conn, &opts, &error) == -1);
	snprintf(want, sizeof(want), "cannot connect to [::1]:%d: ", port);
	CHECK(starts_with(error, want));
}

static void test_unresolvable(void)
{
	char host[128];
	struct conn_opts opts;
	struct conn *conn = NULL;
	const char *error = NULL;

	memset(host, 'a', 70);
	strcpy(host + 70, ".invalid");
	opts = opts_for(host, 993, true, NULL);
	CHECK(conn_open(&conn, &opts, &error) == -1);
	CHECK(conn == NULL);
	CHECK(starts_with(error, "cannot resolve aaaaaaaaaa"));
	CHECK(contains(error, ".invalid: "));
	CHECK(strchr(error, '\n') == NULL);
}

static void test_bad_opts(void)
{
	struct conn_opts opts = opts_for("127.0.0.1", 0, true, NULL);
	struct conn *conn = NULL;
	const char *error = NULL;

	CHECK(conn_open(&conn, &opts, &error) == -1);
	CHECK(starts_with(error, "invalid port 0 for 127.0.0.1"));
	opts = opts_for("", 993, true, NULL);
	CHECK(conn_open(&conn, &opts, &error) == -1);
	CHECK(conn == NULL);

	/* NULL-safe close. */
	conn_close(&conn);
	conn_close(NULL);
}

static void test_bad_cafile(void)
{
	struct server srv;
	struct conn *conn;
	const char *error;
	char path[300];
	FILE *f;

	CHECK(open_tls(&srv, &conn, SERVER_ECHO, ctx_a, "127.0.0.1",
		       "/nonexistent/ca.pem", &error) == -1);
	CHECK_STR(error, "cannot read CA file /nonexistent/ca.pem: No such file or directory");
	server_stop(&srv);

	snprintf(path, sizeof(path), "%s.junk", cert_a.path);
	f = fopen(path, "w");
	CHECK(f != NULL);
	if (f == NULL)
		return;
	fputs("this is not a certificate\n", f);
	fclose(f);
	CHECK(open_tls(&srv, &conn, SERVER_ECHO, ctx_a, "127.0.0.1", path,
		       &error) == -1);
	CHECK(starts_with(error, "cannot read CA file "));
	CHECK(contains(error, ".junk: "));
	server_stop(&srv);
	unlink(path);
}

static void test_read_timeout(void)
{
	struct conn_opts opts;
	struct server srv;
	struct conn *conn = NULL;
	const char *error;
	int64_t start, took;
	char buf[16];
	ssize_t n;

	CHECK(server_start(&srv, SERVER_SILENT, NULL, false) == 0);
	opts = opts_for("127.0.0.1", srv.port, false, NULL);
	CHECK(conn_open(&conn, &opts, &error) == 0);
	if (conn == NULL)
		goto out;
	conn_set_io_timeout(conn, 300);
	CHECK(!conn_has_input(conn));
	start = now_ms();
	n = conn_read(conn, buf, sizeof(buf));
	took = now_ms() - start;
	CHECK(n == -ETIMEDOUT);
	CHECK(took >= 290 && took < 3000);
	CHECK(starts_with(conn_last_error(), "cannot read from 127.0.0.1:"));
	CHECK(contains(conn_last_error(), "timed out after 0.3 s"));
out:
	conn_close(&conn);
	server_stop(&srv);
}

static void test_handshake_timeout(void)
{
	struct conn_opts opts;
	struct server srv;
	struct conn *conn = NULL;
	const char *error = NULL;
	int64_t start, took;

	CHECK(server_start(&srv, SERVER_SILENT, NULL, false) == 0);
	opts = opts_for("127.0.0.1", srv.port, true, cert_a.path);
	opts.connect_timeout_ms = 300;
	start = now_ms();
	CHECK(conn_open(&conn, &opts, &error) == -1);
	took = now_ms() - start;
	CHECK(took >= 290 && took < 3000);
	CHECK(starts_with(error,
			  "TLS handshake with 127.0.0.1 failed: timed out after 0.3 s"));
	CHECK(contains(error, "speaks TLS"));
	server_stop(&srv);
}

/* A server that stops reading: writes fail after io_timeout_ms without
 * progress, in plaintext and in TLS. */
static void test_write_timeout(bool tls)
{
	enum { CHUNK = 1024 * 1024, MAX_CHUNKS = 256 };
	unsigned char *buf = calloc(1, CHUNK);
	struct conn_opts opts;
	struct server srv;
	struct conn *conn = NULL;
	const char *error = NULL;
	int64_t start = 0;
	int i, ret = 0;

	if (buf == NULL)
		return;
	CHECK(server_start(&srv, tls ? SERVER_TLS_STUCK : SERVER_STUCK, ctx_a,
			   false) == 0);
	opts = opts_for("127.0.0.1", srv.port, tls, cert_a.path);
	opts.io_timeout_ms = 300;
	CHECK(conn_open(&conn, &opts, &error) == 0);
	if (conn == NULL)
		goto out;
	for (i = 0; i < MAX_CHUNKS && ret == 0; i++) {
		start = now_ms();
		ret = conn_write(conn, buf, CHUNK);
	}
	CHECK(ret == -ETIMEDOUT);
	CHECK(now_ms() - start < 3000);
	CHECK(starts_with(conn_last_error(), "cannot write to 127.0.0.1:"));
	CHECK(contains(conn_last_error(), "timed out after 0.3 s"));
out:
	conn_close(&conn);
	server_stop(&srv);
	free(buf);
}

/* A server whose accept queue is full drops the SYN: connect times out. */
static void test_connect_timeout(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	struct conn_opts opts;
	struct conn *conn = NULL;
	const char *error = NULL;
	int lfd, fds[8], nfds = 0, i;
	int64_t start, took;
	bool full = false;
	char want[128];

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(lfd >= 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    listen(lfd, 0) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sin, &len) < 0)
		goto out;
	while (nfds < 8 && !full) {
		struct pollfd pfd = { .events = POLLOUT };

		pfd.fd = fds[nfds] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
		if (pfd.fd < 0)
			break;
		nfds++;
		(void)connect(pfd.fd, (struct sockaddr *)&sin, sizeof(sin));
		full = poll(&pfd, 1, 200) == 0;
	}
	if (!full) {
		printf("skip: cannot fill an accept queue here\n");
		goto out;
	}
	opts = opts_for("127.0.0.1", ntohs(sin.sin_port), true, NULL);
	opts.connect_timeout_ms = 300;
	start = now_ms();
	CHECK(conn_open(&conn, &opts, &error) == -1);
	took = now_ms() - start;
	CHECK(took >= 290 && took < 3000);
	snprintf(want, sizeof(want),
		 "cannot connect to 127.0.0.1:%d: timed out after 0.3 s",
		 ntohs(sin.sin_port));
	CHECK_STR(error, want);
out:
	for (i = 0; i < nfds; i++)
		close(fds[i]);
	if (lfd >= 0)
		close(lfd);
}

/* A plaintext greeting where a TLS server hello should be. */
static void test_not_tls(void)
{
	struct conn_opts opts;
	struct server srv;
	struct conn *conn = NULL;
	const char *error = NULL;

	CHECK(server_start(&srv, SERVER_GREET, NULL, false) == 0);
	opts = opts_for("127.0.0.1", srv.port, true, cert_a.path);
	CHECK(conn_open(&conn, &opts, &error) == -1);
	CHECK(starts_with(error, "TLS handshake with 127.0.0.1 failed: the server answered without TLS: "));
	CHECK(contains(error, "(check that port "));
	server_stop(&srv);
}

static void test_peer_close(void)
{
	struct conn_opts opts;
	struct server srv;
	struct conn *conn;
	const char *error;
	char buf[16];
	int ret;

	/* close_notify: orderly EOF, which has_input reports as input. */
	ret = open_tls(&srv, &conn, SERVER_BYE_NOTIFY, ctx_a, "127.0.0.1",
		       cert_a.path, &error);
	CHECK(ret == 0);
	if (ret == 0) {
		CHECK(read_full(conn, buf, 5) == 0 && memcmp(buf, "bye\r\n", 5) == 0);
		server_stop(&srv);
		CHECK(conn_has_input(conn));
		CHECK(conn_read(conn, buf, sizeof(buf)) == 0);
		CHECK(conn_read(conn, buf, sizeof(buf)) == 0);
	}
	conn_close(&conn);
	server_stop(&srv);

	/* No close_notify: possibly truncated, so not a clean EOF. */
	ret = open_tls(&srv, &conn, SERVER_BYE_ABRUPT, ctx_a, "127.0.0.1",
		       cert_a.path, &error);
	CHECK(ret == 0);
	if (ret == 0) {
		CHECK(read_full(conn, buf, 5) == 0 && memcmp(buf, "bye\r\n", 5) == 0);
		CHECK(conn_read(conn, buf, sizeof(buf)) == -ECONNRESET);
		CHECK(conn_read(conn, buf, sizeof(buf)) == -ECONNRESET);
		CHECK(conn_write(conn, "x", 1) < 0);
	}
	conn_close(&conn);
	server_stop(&srv);

	/* The same, seen first by conn_has_input. */
	ret = open_tls(&srv, &conn, SERVER_BYE_ABRUPT, ctx_a, "127.0.0.1",
		       cert_a.path, &error);
	CHECK(ret == 0);
	if (ret == 0) {
		CHECK(read_full(conn, buf, 5) == 0);
		server_stop(&srv);
		CHECK(conn_has_input(conn));
		CHECK(conn_read(conn, buf, sizeof(buf)) == -ECONNRESET);
	}
	conn_close(&conn);
	server_stop(&srv);

	/* Plaintext has no close_notify: EOF is EOF. */
	CHECK(server_start(&srv, SERVER_PLAIN_BYE, NULL, false) == 0);
	opts = opts_for("127.0.0.1", srv.port, false, NULL);
	CHECK(conn_open(&conn, &opts, &error) == 0);
	if (conn != NULL) {
		CHECK(read_full(conn, buf, 5) == 0);
		CHECK(conn_read(conn, buf, sizeof(buf)) == 0);
	}
	conn_close(&conn);
	server_stop(&srv);
}

static void test_old_tls(void)
{
	SSL_CTX *ctx = server_ctx(&cert_a, TLS1_1_VERSION);
	struct server srv;
	struct conn *conn;
	const char *error;

	if (ctx == NULL) {
		printf("skip: this OpenSSL cannot serve TLS 1.1\n");
		ERR_clear_error();
		return;
	}
	CHECK(open_tls(&srv, &conn, SERVER_ECHO, ctx, "127.0.0.1",
		       cert_a.path, &error) == -1);
	CHECK(starts_with(error, "TLS handshake with 127.0.0.1 failed: "));
	CHECK(contains(error, "TLS 1.2"));
	server_stop(&srv);
	SSL_CTX_free(ctx);
}

#define THREADS 4

static void *thread_client(void *arg)
{
	struct server srv;
	struct conn *conn;
	const char *error;
	char msg[64];
	int i, *ok = arg;

	*ok = open_tls(&srv, &conn, SERVER_ECHO, ctx_a, "127.0.0.1",
		       cert_a.path, &error) == 0;
	for (i = 0; *ok && i < 50; i++) {
		snprintf(msg, sizeof(msg), "line %d of thread %p\r\n", i, arg);
		*ok = echo_ok(conn, msg);
	}
	conn_close(&conn);
	server_stop(&srv);
	return NULL;
}

/* Separate conns in separate threads share nothing. */
static void test_threads(void)
{
	pthread_t threads[THREADS];
	int ok[THREADS], i;

	for (i = 0; i < THREADS; i++)
		CHECK(pthread_create(&threads[i], NULL, thread_client, &ok[i]) == 0);
	for (i = 0; i < THREADS; i++) {
		pthread_join(threads[i], NULL);
		CHECK(ok[i]);
	}
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);

	if (make_cert(&cert_a, "127.0.0.1", "IP:127.0.0.1,IP:::1,DNS:localhost",
		      NULL, 1) < 0 ||
	    make_cert(&cert_b, "other.example", "DNS:other.example",
		      "critical,CA:FALSE", 2) < 0 ||
	    make_cert(&cert_c, "localhost", "DNS:localhost", "critical,CA:TRUE",
		      3) < 0) {
		fprintf(stderr, "cannot make test certificates\n");
		ERR_print_errors_fp(stderr);
		return 1;
	}
	ctx_a = server_ctx(&cert_a, 0);
	ctx_b = server_ctx(&cert_b, 0);
	ctx_c = server_ctx(&cert_c, 0);
	if (ctx_a == NULL || ctx_b == NULL || ctx_c == NULL) {
		fprintf(stderr, "cannot set up test servers\n");
		return 1;
	}

	test_trusted_cafile();
	test_bulk();
	test_untrusted();
	test_dns_name();
	test_ipv6();
	test_mismatch();
	test_insecure();
	test_starttls(cert_a.path, true);
	test_starttls(NULL, false);
	test_refused();
	test_unresolvable();
	test_bad_opts();
	test_bad_cafile();
	test_read_timeout();
	test_write_timeout(false);
	test_write_timeout(true);
	test_connect_timeout();
	test_handshake_timeout();
	test_not_tls();
	test_peer_close();
	test_old_tls();
	test_threads();

	SSL_CTX_free(ctx_a);
	SSL_CTX_free(ctx_b);
	SSL_CTX_free(ctx_c);
	free_cert(&cert_a);
	free_cert(&cert_b);
	free_cert(&cert_c);
	return check_exit();
}
