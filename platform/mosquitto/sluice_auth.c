/* Sluice's Mosquitto auth plugin (plugin API v5, Mosquitto 2.0).
 *
 * Deliberately dumb: every decision is made by Sluice's Python process (ingest/mqtt_auth.py),
 * asked over a Unix socket with a line protocol of hex-encoded fields (the full protocol is
 * described there).  This file only forwards events and carries out kicks:
 *   MOSQ_EVT_BASIC_AUTH  -> "AUTH <conn> <clientid> <username> <password> <certificate DER>"
 *   MOSQ_EVT_ACL_CHECK   -> "ACL <conn> <access> <topic> <clientid>"
 *   MOSQ_EVT_DISCONNECT  -> "BYE <conn>"
 *   MOSQ_EVT_TICK        -> "KICKS" (at most every poll_ms), answered
 *                           "OK <clientid> ...[ | <conn> ...]" or "OK ... | *"
 *   plugin start         -> "RESET" (a new broker: no connection of an earlier one is open)
 * Any failure to get an answer is a refusal (fail closed).  Nothing secret is logged.
 *
 * A publish the Python side allowed is remembered for its connection (a device publishes to
 * one topic, so one topic per connection), and the next publish of that connection to that
 * topic is let through without asking: a round trip per record would cost a fifth of MQTT's
 * CPU and hold Mosquitto's one thread.  What is remembered is forgotten when the connection
 * authenticates or ends, when a KICKS answer names the connection after "|" (a change of
 * rights touched it: the Python side refuses it while it re-checks), on "| *", and whenever
 * the socket is connected anew (the Python side restarted and knows no connection).  So a
 * change of rights stops a session's publishes within one poll (poll_ms).
 *
 * One decision is taken here: the bridge (by its client id, bridge_client_id) may receive any
 * device's records topic, sluice/<tenant>/<group>/<device>/records.  Mosquitto checks READ
 * for every message it delivers, also to the bridge's session while the bridge is away;
 * asking for each would double the round trips per record, and a message must never be
 * withheld from the bridge (a refused READ drops it for that subscriber).
 *
 * Options (mosquitto.conf): plugin_opt_socket <path>, plugin_opt_poll_ms <ms>.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/x509.h>

#include "mosquitto.h"
#include "mosquitto_broker.h"
#include "mosquitto_plugin.h"

#define LINE_MAX_BYTES (64 * 1024)
#define ANSWER_TIMEOUT_S 3

static mosquitto_plugin_id_t *plugin_id;
static char socket_path[108];
static long poll_ms = 500;
static int fd = -1;
static struct timespec last_poll;
static char line[LINE_MAX_BYTES];

/* The publishes allowed, per connection (chained hash table on the client's address). */
#define ALLOWED_SLOTS 4096
struct allowed {
	const struct mosquitto *client;
	char *topic;
	struct allowed *next;
};
static struct allowed *allowed_slots[ALLOWED_SLOTS];

static size_t allowed_slot(const struct mosquitto *client)
{
	return (size_t)(((uintptr_t)client >> 4) * 2654435761u) & (ALLOWED_SLOTS - 1);
}

static int allowed_has(const struct mosquitto *client, const char *topic)
{
	const struct allowed *a;

	for(a = allowed_slots[allowed_slot(client)]; a != NULL; a = a->next){
		if(a->client == client) return topic != NULL && strcmp(a->topic, topic) == 0;
	}
	return 0;
}

static void allowed_drop(const struct mosquitto *client)
{
	struct allowed **link = &allowed_slots[allowed_slot(client)], *a;

	while((a = *link) != NULL){
		if(a->client == client){
			*link = a->next;
			free(a->topic);
			free(a);
			return;
		}
		link = &a->next;
	}
}

static void allowed_put(const struct mosquitto *client, const char *topic)
{
	struct allowed *a;
	size_t slot = allowed_slot(client);

	if(topic == NULL) return;
	allowed_drop(client);
	a = malloc(sizeof(*a));
	if(a == NULL) return;
	a->topic = strdup(topic);
	if(a->topic == NULL){
		free(a);
		return;
	}
	a->client = client;
	a->next = allowed_slots[slot];
	allowed_slots[slot] = a;
}

static void allowed_clear(void)
{
	struct allowed *a, *next;
	size_t i;

	for(i = 0; i < ALLOWED_SLOTS; i++){
		for(a = allowed_slots[i]; a != NULL; a = next){
			next = a->next;
			free(a->topic);
			free(a);
		}
		allowed_slots[i] = NULL;
	}
}

static void disconnect_socket(void)
{
	if(fd >= 0) close(fd);
	fd = -1;
}

static int connect_socket(void)
{
	struct sockaddr_un addr;
	struct timeval timeout = {ANSWER_TIMEOUT_S, 0};

	if(fd >= 0) return 0;
	allowed_clear();  /* a new connection may be a new Python side, which knows no connection */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if(fd < 0) return -1;
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, socket_path, sizeof(addr.sun_path) - 1);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
	if(connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0){
		disconnect_socket();
		return -1;
	}
	return 0;
}

/* Appends " <hex of data>" ("-" when there is nothing) to line at *used. */
static int add_field(size_t *used, const void *data, size_t len)
{
	static const char digits[] = "0123456789abcdef";
	const unsigned char *bytes = data;
	size_t i;

	if(*used + 2 + 2 * len + 2 > sizeof(line)) return -1;
	line[(*used)++] = ' ';
	if(data == NULL || len == 0){
		line[(*used)++] = '-';
		return 0;
	}
	for(i = 0; i < len; i++){
		line[(*used)++] = digits[bytes[i] >> 4];
		line[(*used)++] = digits[bytes[i] & 0x0f];
	}
	return 0;
}

static int add_text(size_t *used, const char *text)
{
	return add_field(used, text, text ? strlen(text) : 0);
}

/* Sends line[0..used) plus a newline; reads one answer line into line.  0 on success. */
static int ask(size_t used)
{
	size_t got = 0;
	ssize_t n;
	int attempt;

	line[used++] = '\n';
	for(attempt = 0; attempt < 2; attempt++){
		if(connect_socket() != 0) return -1;
		if(send(fd, line, used, MSG_NOSIGNAL) == (ssize_t)used) break;
		disconnect_socket();  /* the Python side restarted: one new connection */
		if(attempt == 1) return -1;
	}
	while(got < sizeof(line) - 1){
		n = recv(fd, line + got, sizeof(line) - 1 - got, 0);
		if(n <= 0){
			disconnect_socket();
			return -1;
		}
		got += (size_t)n;
		if(line[got - 1] == '\n'){
			line[got - 1] = '\0';
			return 0;
		}
	}
	disconnect_socket();
	return -1;
}

static size_t start(const char *verb, const struct mosquitto *client)
{
	char conn[32];
	size_t used = (size_t)snprintf(line, sizeof(line), "%s", verb);

	if(client != NULL){
		snprintf(conn, sizeof(conn), "%lx", (unsigned long)(uintptr_t)client);
		used += (size_t)snprintf(line + used, sizeof(line) - used, " %s", conn);
	}
	return used;
}

/* Whether id is a bridge's client id: sluice-bridge or sluice-bridge-<1 to 4 digits>
 * (mqtt_auth.bridge_client_id_allowed).  Only the bridge, with its password, is let in under
 * one (a device's client id always has a '/'), and a session Mosquitto keeps for the bridge
 * while it is away keeps the id. */
static int bridge_client_id(const char *id)
{
	const char *base = "sluice-bridge";
	size_t len = id ? strlen(id) : 0, i;

	if(len < strlen(base) || strncmp(id, base, strlen(base)) != 0) return 0;
	if(len == strlen(base)) return 1;
	if(id[strlen(base)] != '-' || len == strlen(base) + 1 || len > strlen(base) + 5) return 0;
	for(i = strlen(base) + 1; i < len; i++){
		if(id[i] < '0' || id[i] > '9') return 0;
	}
	return 1;
}

/* Whether topic is sluice/<a>/<b>/<c>/records with a, b, c not empty (mqtt_auth.records_topic_parts). */
static int records_topic(const char *topic)
{
	const char *prefix = "sluice/", *suffix = "/records";
	size_t len = topic ? strlen(topic) : 0, i, slashes = 0;

	if(len < strlen(prefix) + 5 + strlen(suffix)) return 0;
	if(strncmp(topic, prefix, strlen(prefix)) != 0) return 0;
	if(strcmp(topic + len - strlen(suffix), suffix) != 0) return 0;
	if(topic[strlen(prefix)] == '/' || topic[len - strlen(suffix) - 1] == '/') return 0;
	for(i = strlen(prefix); i < len - strlen(suffix); i++){
		if(topic[i] == '/'){
			if(topic[i - 1] == '/') return 0;
			slashes++;
		}
	}
	return slashes == 2;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	X509 *cert = mosquitto_client_certificate(ed->client);
	unsigned char *der = NULL;
	int der_len = 0;
	size_t used = start("AUTH", ed->client);
	int rc = MOSQ_ERR_AUTH;

	(void)event; (void)userdata;
	allowed_drop(ed->client);
	if(cert != NULL){
		der_len = i2d_X509(cert, &der);
		X509_free(cert);  /* mosquitto_client_certificate returns a new reference */
	}
	if(add_text(&used, mosquitto_client_id(ed->client)) == 0
			&& add_text(&used, ed->username) == 0
			&& add_text(&used, ed->password) == 0
			&& add_field(&used, der, der_len > 0 ? (size_t)der_len : 0) == 0
			&& ask(used) == 0){
		if(strcmp(line, "OK") == 0) rc = MOSQ_ERR_SUCCESS;
		else mosquitto_log_printf(MOSQ_LOG_NOTICE, "sluice: refused client %s: %s",
				mosquitto_client_id(ed->client), line);
	}else{
		mosquitto_log_printf(MOSQ_LOG_WARNING, "sluice: no answer from %s; refusing the connection", socket_path);
	}
	OPENSSL_free(der);
	return rc;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	size_t used;

	(void)event; (void)userdata;
	if(ed->access == MOSQ_ACL_READ && bridge_client_id(mosquitto_client_id(ed->client))){
		return records_topic(ed->topic) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
	}
	if(ed->access == MOSQ_ACL_WRITE && allowed_has(ed->client, ed->topic)) return MOSQ_ERR_SUCCESS;
	used = start("ACL", ed->client);
	used += (size_t)snprintf(line + used, sizeof(line) - used, " %d", ed->access);
	if(add_text(&used, ed->topic) == 0 && add_text(&used, mosquitto_client_id(ed->client)) == 0
			&& ask(used) == 0 && strcmp(line, "OK") == 0){
		if(ed->access == MOSQ_ACL_WRITE) allowed_put(ed->client, ed->topic);
		return MOSQ_ERR_SUCCESS;
	}
	return MOSQ_ERR_ACL_DENIED;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;

	(void)event; (void)userdata;
	allowed_drop(ed->client);
	ask(start("BYE", ed->client));
	return MOSQ_ERR_SUCCESS;
}

static unsigned char hex_value(char c)
{
	return (unsigned char)(c <= '9' ? c - '0' : c - 'a' + 10);
}

static int on_tick(int event, void *event_data, void *userdata)
{
	struct timespec now;
	char *field, *save = NULL;
	size_t i, len;
	int forgetting = 0;

	(void)event; (void)event_data; (void)userdata;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if((now.tv_sec - last_poll.tv_sec) * 1000 + (now.tv_nsec - last_poll.tv_nsec) / 1000000 < poll_ms){
		return MOSQ_ERR_SUCCESS;
	}
	last_poll = now;
	if(ask(start("KICKS", NULL)) != 0 || strncmp(line, "OK", 2) != 0){
		allowed_clear();  /* no answer: whatever changed meanwhile is not known here */
		return MOSQ_ERR_SUCCESS;
	}
	for(field = strtok_r(line + 2, " ", &save); field != NULL; field = strtok_r(NULL, " ", &save)){
		if(strcmp(field, "|") == 0){
			forgetting = 1;
			continue;
		}
		if(forgetting){  /* a connection whose publishes must be asked about again */
			if(strcmp(field, "*") == 0) allowed_clear();
			else allowed_drop((const struct mosquitto *)(uintptr_t)strtoul(field, NULL, 16));
			continue;
		}
		len = strlen(field) / 2;
		for(i = 0; i < len; i++){
			field[i] = (char)(hex_value(field[2 * i]) << 4 | hex_value(field[2 * i + 1]));
		}
		field[len] = '\0';
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "sluice: ending the session of client %s", field);
		mosquitto_kick_client_by_clientid(field, false);
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *opts, int opt_count)
{
	int i;

	(void)userdata;
	plugin_id = identifier;
	for(i = 0; i < opt_count; i++){
		if(strcmp(opts[i].key, "socket") == 0){
			strncpy(socket_path, opts[i].value, sizeof(socket_path) - 1);
		}else if(strcmp(opts[i].key, "poll_ms") == 0){
			poll_ms = strtol(opts[i].value, NULL, 10);
		}
	}
	if(socket_path[0] == '\0'){
		mosquitto_log_printf(MOSQ_LOG_ERR, "sluice: plugin_opt_socket is required");
		return MOSQ_ERR_INVAL;
	}
	if(mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL)){
		return MOSQ_ERR_UNKNOWN;
	}
	ask(start("RESET", NULL));  /* nobody to tell yet is fine: the Python side starts empty */
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
	(void)userdata; (void)opts; (void)opt_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	disconnect_socket();
	allowed_clear();
	return MOSQ_ERR_SUCCESS;
}
