// Boost.Beast benchmark client (see bench/README.md for the workloads).
//
// Written like Beast's own asynchronous client example
// (libs/beast/example/websocket/client/async[-ssl]): one io_context run by
// the main thread, a session object per connection, async_connect /
// (SSL handshake) / async_handshake, then async_write and async_read with a
// flat_buffer. Beast allows one write and one read in flight per stream,
// so each session keeps a queue position and writes the next message when
// the previous write completed, while its read loop verifies echoes.
// TCP_NODELAY is set on every socket. For stream/bulk the documented
// throughput knob write_buffer_bytes is raised to 64 KiB (default 4 KiB).
#include "common.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/version.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace beast = boost::beast;
namespace websocket = beast::websocket;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = net::ip::tcp;

static bench_args A;
static bool g_failed, g_done;
static std::string g_err;
static int g_text;
static long g_total, g_echoes, g_connected;
static uint64_t g_t0, g_t1, g_cpu0, g_cpu1, g_srv0, g_srv1, g_last_connect;
static std::vector<uint64_t> g_sent_at;
static hist_t g_lat;
static long g_fan_k, g_nconns;
static uint64_t g_fan_start, g_period, g_late_max;
static net::io_context *g_ioc;

enum class W { pingpong, stream, conns, fanout };
static W g_w;

static void fail(const std::string &why)
{
    if (!g_failed) {
        g_failed = true;
        g_err = why;
    }
    g_ioc->stop();
}

static void finish(uint64_t t)
{
    g_t1 = t;
    g_cpu1 = self_cpu_us();
    g_srv1 = proc_cpu_ns(A.server_pid);
    g_done = true;
    g_ioc->stop();
}

static void start_clock()
{
    g_cpu0 = self_cpu_us();
    g_srv0 = proc_cpu_ns(A.server_pid);
    g_t0 = now_ns();
}

struct session_base {
    long idx = 0;
    virtual ~session_base() = default;
    virtual void start_sending() = 0;
};

template <class NextLayer>
class session : public session_base, public std::enable_shared_from_this<session<NextLayer>> {
    websocket::stream<NextLayer> ws_;
    beast::flat_buffer rbuf_;
    std::vector<uint8_t> wbuf_;
    uint64_t tx_seq_ = 0, rx_seq_ = 0;
    bool writing_ = false;
    long tx_ready_ = 0;      // messages allowed to be sent so far
    std::string host_, path_;
    net::steady_timer timer_;

public:
    template <class... Args>
    explicit session(net::io_context &ioc, Args &&...args)
        : ws_(std::forward<Args>(args)...), timer_(ioc)
    {
        wbuf_.resize((size_t)A.size);
    }

    void run(const tcp::endpoint &ep, const std::string &host, const std::string &path)
    {
        host_ = host;
        path_ = path;
        if (g_w == W::stream)
            ws_.write_buffer_bytes(64 * 1024);
        beast::get_lowest_layer(ws_).async_connect(
            ep, beast::bind_front_handler(&session::on_connect, this->shared_from_this()));
    }

private:
    uint64_t seq_of(uint64_t k) const
    {
        if (g_w == W::fanout) return ((uint64_t)idx << 32) | k;
        if (g_w == W::conns) return (uint64_t)idx;
        return k;
    }

    void on_connect(beast::error_code ec)
    {
        if (ec) return fail("connect: " + ec.message());
        beast::get_lowest_layer(ws_).socket().set_option(tcp::no_delay(true));
        tls_handshake();
    }

    template <class L = NextLayer>
    typename std::enable_if<std::is_same<L, beast::tcp_stream>::value>::type tls_handshake()
    {
        ws_handshake();
    }

    template <class L = NextLayer>
    typename std::enable_if<!std::is_same<L, beast::tcp_stream>::value>::type tls_handshake()
    {
        if (!SSL_set_tlsext_host_name(ws_.next_layer().native_handle(), host_.c_str()))
            return fail("SNI");
        ws_.next_layer().set_verify_callback(ssl::host_name_verification(host_));
        ws_.next_layer().async_handshake(ssl::stream_base::client, [self = this->shared_from_this()](
                                                                       beast::error_code ec) {
            if (ec) return fail("TLS handshake: " + ec.message());
            self->ws_handshake();
        });
    }

    void ws_handshake()
    {
        ws_.async_handshake(host_, path_, beast::bind_front_handler(&session::on_handshake, this->shared_from_this()));
    }

    void on_handshake(beast::error_code ec)
    {
        if (ec) return fail("handshake: " + ec.message());
        if (g_text) ws_.text(true);
        else ws_.binary(true);
        g_connected++;
        g_last_connect = now_ns();
        do_read();
    }

public:
    void start_sending() override
    {
        if (g_w == W::fanout) {
            schedule();
        } else {
            tx_ready_ = g_w == W::pingpong ? 1 : g_w == W::conns ? 1 : (long)g_total;
            do_write();
        }
    }

private:
    uint64_t due(uint64_t k) const
    {
        return g_fan_start + k * g_period + FANOUT_OFFSET_NS((uint64_t)idx, g_period, (uint64_t)g_nconns);
    }

    void schedule()
    {
        if ((long)tx_seq_ >= g_fan_k) return;
        uint64_t d = due(tx_seq_), t = now_ns();
        timer_.expires_after(std::chrono::nanoseconds(d > t ? d - t : 0));
        timer_.async_wait([self = this->shared_from_this()](beast::error_code ec) {
            if (ec) return;
            self->tx_ready_ = (long)self->tx_seq_ + 1;
            self->do_write();
        });
    }

    void do_write()
    {
        if (writing_ || (long)tx_seq_ >= tx_ready_ || g_failed) return;
        uint64_t seq = seq_of(tx_seq_);
        fill_msg(wbuf_.data(), seq, wbuf_.size(), g_text);
        uint64_t t = now_ns();
        if (g_w == W::pingpong) {
            if ((long)tx_seq_ == A.warmup) start_clock();
            g_sent_at[0] = now_ns();
        } else if (g_w == W::fanout) {
            uint64_t d = due(tx_seq_);
            if (t > d && t - d > g_late_max) g_late_max = t - d;
            g_sent_at[(size_t)idx * (size_t)g_fan_k + tx_seq_] = t;
        }
        writing_ = true;
        ws_.async_write(net::buffer(wbuf_), beast::bind_front_handler(&session::on_write, this->shared_from_this()));
    }

    void on_write(beast::error_code ec, std::size_t)
    {
        writing_ = false;
        if (ec) return fail("write: " + ec.message());
        tx_seq_++;
        if (g_w == W::fanout) {
            schedule();
            return;
        }
        do_write();
    }

    void do_read()
    {
        ws_.async_read(rbuf_, beast::bind_front_handler(&session::on_read, this->shared_from_this()));
    }

    void on_read(beast::error_code ec, std::size_t)
    {
        if (g_done || g_failed) return;
        if (ec) return fail("read: " + ec.message());
        uint64_t t = now_ns();
        uint64_t k = rx_seq_;
        uint64_t seq = seq_of(k);
        const uint8_t *data = static_cast<const uint8_t *>(rbuf_.data().data());
        size_t len = rbuf_.size();
        bool bad = ws_.got_text() != (g_text != 0) || check_msg(data, len, seq, (size_t)A.size, g_text) ||
                   (g_w == W::fanout && (long)k >= g_fan_k) || (g_w == W::conns && k > 0);
        if (bad) {
            char d[200];
            describe_mismatch(d, sizeof d, data, len, seq, (size_t)A.size, g_text);
            return fail("conn " + std::to_string(idx) + ": bad echo: " + d);
        }
        rbuf_.consume(len);
        rx_seq_ = k + 1;
        switch (g_w) {
        case W::pingpong:
            if ((long)k >= A.warmup) hist_add(&g_lat, t - g_sent_at[0]);
            if ((long)rx_seq_ == g_total) return finish(t);
            tx_ready_ = (long)rx_seq_ + 1;
            do_write();
            break;
        case W::stream:
            if ((long)rx_seq_ == g_total) return finish(t);
            break;
        case W::conns:
            if (++g_echoes == g_total) return finish(t);
            break;
        case W::fanout: {
            size_t slot = (size_t)idx * (size_t)g_fan_k + k;
            hist_add(&g_lat, t - g_sent_at[slot]);
            if (++g_echoes == g_total) return finish(t);
            break;
        }
        }
        do_read();
    }
};

static std::string g_host, g_path;
static int g_port;
static bool g_wss;
static std::unique_ptr<ssl::context> g_ssl;
static std::vector<std::shared_ptr<session_base>> g_sessions;

static void parse_url(const char *url)
{
    std::string u(url);
    size_t p;
    if (!strncasecmp(url, "ws://", 5)) { p = 5; g_wss = false; g_port = 80; }
    else if (!strncasecmp(url, "wss://", 6)) { p = 6; g_wss = true; g_port = 443; }
    else { fprintf(stderr, "bad url\n"); exit(2); }
    size_t slash = u.find('/', p);
    std::string hp = u.substr(p, slash == std::string::npos ? std::string::npos : slash - p);
    g_path = slash == std::string::npos ? "/" : u.substr(slash);
    size_t colon = hp.rfind(':');
    if (colon != std::string::npos && hp.find(']', colon) == std::string::npos) {
        g_port = atoi(hp.c_str() + colon + 1);
        hp = hp.substr(0, colon);
    }
    g_host = hp;
}

static void open_conns(net::io_context &ioc, long first, long n)
{
    tcp::endpoint ep(net::ip::make_address(g_host), (unsigned short)g_port);
    std::string host = g_host + ":" + std::to_string(g_port);
    for (long i = first; i < first + n; i++) {
        std::shared_ptr<session_base> s;
        if (g_wss) {
            auto p = std::make_shared<session<beast::ssl_stream<beast::tcp_stream>>>(ioc, ioc, *g_ssl);
            p->idx = i;
            p->run(ep, g_host, g_path);
            s = p;
        } else {
            auto p = std::make_shared<session<beast::tcp_stream>>(ioc, ioc);
            p->idx = i;
            p->run(ep, host, g_path);
            s = p;
        }
        if ((long)g_sessions.size() <= i) g_sessions.resize((size_t)i + 1);
        g_sessions[(size_t)i] = s;
    }
}

// Runs the loop until pred() holds or a failure; the io_context is stopped
// and restarted around each phase.
static int run_until(net::io_context &ioc, const std::function<bool()> &pred, double timeout_s)
{
    uint64_t end = now_ns() + (uint64_t)(timeout_s * 1e9);
    while (!pred() && !g_failed) {
        if (now_ns() > end) return -1;
        ioc.restart();
        ioc.run_for(std::chrono::milliseconds(5));
    }
    return g_failed ? -1 : 0;
}

static void report_head()
{
    json_head("boost-beast", &A);
}

static int report_tail()
{
    json_bool("ok", !g_failed);
    if (g_failed) json_str("error", g_err.c_str());
    json_end();
    fflush(stdout);
    _exit(g_failed ? 1 : 0); // skip tearing down thousands of sessions
}

int main(int argc, char **argv)
{
    bench_parse_args(argc, argv, &A);
    parse_url(A.url);
    pattern_init((size_t)A.size);
    long lim = raise_nofile();
    net::io_context ioc{1};
    g_ioc = &ioc;
    if (g_wss) {
        g_ssl = std::make_unique<ssl::context>(ssl::context::tls_client);
        g_ssl->set_verify_mode(ssl::verify_peer);
        if (A.ca) g_ssl->load_verify_file(A.ca);
        else g_ssl->set_default_verify_paths();
    }
    std::string w = A.workload;
    g_w = w == "pingpong" ? W::pingpong : w == "conns" ? W::conns : w == "fanout" ? W::fanout : W::stream;
    auto connected = [](long want) { return [want] { return g_connected >= want; }; };

    if (g_w == W::pingpong || g_w == W::stream) {
        bool pp = g_w == W::pingpong;
        g_text = pp;
        g_total = A.n + (pp ? A.warmup : 0);
        g_sent_at.assign(1, 0);
        g_nconns = 1;
        open_conns(ioc, 0, 1);
        if (run_until(ioc, connected(1), 30.0) == 0) {
            if (!pp || A.warmup == 0) start_clock();
            g_sessions[0]->start_sending();
            if (run_until(ioc, [] { return g_done; }, 600.0) && !g_failed) fail("timed out");
        }
        report_head();
        if (!g_failed) {
            json_interval(A.n, A.size, g_t0, g_t1, g_cpu0, g_cpu1, g_srv0, g_srv1, A.server_pid);
            if (pp) {
                json_num("warmup", (double)A.warmup);
                json_num("rtt_median_us", hist_percentile_us(&g_lat, 0.5));
                json_num("rtt_p99_us", hist_percentile_us(&g_lat, 0.99));
            }
            json_num("maxrss_kb", (double)self_maxrss_kb());
            json_str("nodelay", nodelay_state());
        }
        return report_tail();
    }

    if (g_w == W::conns) {
        long n = A.n;
        g_total = n;
        g_nconns = n;
        report_head();
        json_num("nofile", (double)lim);
        if (lim < n + 64) {
            fail("RLIMIT_NOFILE too low");
            return report_tail();
        }
        g_sessions.reserve((size_t)n + 1);
        open_conns(ioc, n, 1);
        if (run_until(ioc, connected(1), 30.0)) return report_tail();
        usleep(100000);
        mem_snap m0 = mem_now();
        uint64_t t0 = now_ns();
        open_conns(ioc, 0, n);
        if (run_until(ioc, connected(n + 1), 120.0)) {
            if (!g_failed) fail("timed out connecting");
            return report_tail();
        }
        uint64_t t1 = g_last_connect;
        usleep(100000);
        mem_snap m1 = mem_now();
        for (long i = 0; i < n; i++) g_sessions[(size_t)i]->start_sending();
        if (run_until(ioc, [] { return g_done; }, 120.0) && !g_failed) fail("timed out waiting for echoes");
        usleep(100000);
        mem_snap m2 = mem_now();
        json_num("connect_total_ms", (double)(t1 - t0) / 1e6);
        json_num("connects_per_s", (double)n / ((double)(t1 - t0) / 1e9));
        json_num("rss_per_conn_b", (double)(m1.rss_kb - m0.rss_kb) * 1024.0 / (double)n);
        json_num("vmdata_per_conn_b", (double)(m1.data_kb - m0.data_kb) * 1024.0 / (double)n);
        json_num("malloc_per_conn_b", ((double)m1.heap_used - (double)m0.heap_used) / (double)n);
        json_num("malloc_arena_per_conn_b", ((double)m1.heap_arena - (double)m0.heap_arena) / (double)n);
        json_num("rss_per_conn_after_echo_b", (double)(m2.rss_kb - m0.rss_kb) * 1024.0 / (double)n);
        json_num("malloc_per_conn_after_echo_b", ((double)m2.heap_used - (double)m0.heap_used) / (double)n);
        json_num("rss_base_kb", (double)m0.rss_kb);
        json_num("vmdata_base_kb", (double)m0.data_kb);
        json_num("threads", (double)self_threads());
        json_str("nodelay", nodelay_state());
        return report_tail();
    }

    // fanout
    long C = A.conns, K = A.n;
    g_fan_k = K;
    g_total = C * K;
    g_nconns = C;
    g_sent_at.assign((size_t)(C * K), 0);
    open_conns(ioc, 0, C);
    if (run_until(ioc, connected(C), 60.0) == 0) {
        g_period = 1000000000ull / (uint64_t)A.rate;
        g_fan_start = now_ns() + 20000000ull;
        g_cpu0 = self_cpu_us();
        g_srv0 = proc_cpu_ns(A.server_pid);
        g_t0 = g_fan_start;
        for (auto &s : g_sessions) s->start_sending();
        if (run_until(ioc, [] { return g_done; }, 60.0) && !g_failed) fail("timed out");
    }
    report_head();
    json_num("conns", (double)C);
    json_num("rate", (double)A.rate);
    json_num("duration_s", A.duration);
    if (!g_failed) {
        json_interval(C * K, A.size, g_t0, g_t1, g_cpu0, g_cpu1, g_srv0, g_srv1, A.server_pid);
        json_num("lat_median_us", hist_percentile_us(&g_lat, 0.5));
        json_num("lat_p99_us", hist_percentile_us(&g_lat, 0.99));
        json_num("send_late_max_us", (double)g_late_max / 1e3);
        json_str("nodelay", nodelay_state());
    }
    return report_tail();
}
