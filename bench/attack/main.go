// Command attack is the sidecar bench's open-loop load generator: vegeta's attacker (its Go
// library: the HTTP client, workers and connections of `vegeta attack`) at a constant rate,
// with two changes that keep the generator's own delays out of the latencies it reports.
//
//   - Pacing. vegeta's loop waits with time.Sleep, and Go's runtime waits for a timer in
//     epoll_wait, whose timeout is in milliseconds: a sleep under 1 ms lasts 1 ms whenever the
//     process has nothing else to do (golang/go#53824). At 13,600 requests/s `vegeta attack`
//     slept 1.1 ms about 350 times a second and then sent the dozen requests due at once,
//     which queued behind each other. Here the loop waits on a timerfd(2), whose expiry ends
//     the runtime's epoll_wait as a response does, and sends what is due at the next multiple
//     of -quantum since the start (0: each request when due). Waking for every request costs:
//     on the bench's 2-core VM at 13,600/s the generator then needed 87-90% of its core
//     (vegeta: 56-62%), and the ledger writer beside it fell from 1,000 to 300-430 events/s;
//     at -quantum 500us it needed 47-57%, the writer kept its rate.
//   - Results. Kept in memory (start, status, latency) and written as CSV after the attack,
//     where `vegeta attack` encodes each result, with its headers and body, during it; bodies
//     are read and dropped (vegeta's -max-body 0).
//
// Usage (bench/sidecar.py runs it pinned to one core):
//
//	attack -targets FILE -rate N -quantum 500us -duration 10s -connections 16 -output FILE.csv
//
// FILE holds vegeta's HTTP targets ("GET url" lines), taken round robin. -rate 0 attacks as
// fast as the connections go (closed loop). Each output line: the request's start (Unix ns),
// its status (0: no response), its latency (ns).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
	"golang.org/x/sys/unix"
)

// steady paces like vegeta's ConstantPacer, but waits on a timerfd read through Go's netpoller.
type steady struct {
	vegeta.ConstantPacer
	quantum time.Duration
	fd      int
	timer   *os.File
}

func newSteady(rate int, quantum time.Duration) (*steady, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd_create: %w", err)
	}
	return &steady{
		ConstantPacer: vegeta.ConstantPacer{Freq: rate, Per: time.Second},
		quantum:       quantum,
		fd:            fd,
		timer:         os.NewFile(uintptr(fd), "timerfd"), // non-blocking: the netpoller's
	}, nil
}

// Pace waits until the next request is due (at the quantum's next multiple) and tells the
// attack loop to send it at once.
func (p *steady) Pace(elapsed time.Duration, hits uint64) (time.Duration, bool) {
	wait, stop := p.ConstantPacer.Pace(elapsed, hits)
	if stop || wait <= 0 {
		return wait, stop
	}
	if p.quantum > 0 {
		due := elapsed + wait
		wait = (due+p.quantum-1)/p.quantum*p.quantum - elapsed
	}
	expiry := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(wait))}
	if unix.TimerfdSettime(p.fd, 0, &expiry, nil) != nil {
		return wait, false // the attack loop's time.Sleep, then
	}
	var expirations [8]byte
	if _, err := p.timer.Read(expirations[:]); err != nil {
		return wait, false
	}
	return 0, false
}

// row is one request: when it started (Unix ns), its status (0: no response), its latency (ns).
type row struct {
	start   int64
	code    uint16
	latency int64
}

func main() {
	targets := flag.String("targets", "", "vegeta HTTP targets, taken round robin")
	rate := flag.Int("rate", 0, "requests per second; 0: as fast as the connections go")
	quantum := flag.Duration("quantum", 0, "send what is due at multiples of this; 0: when due")
	duration := flag.Duration("duration", 10*time.Second, "how long to attack")
	connections := flag.Int("connections", 16, "connections (and workers) at most")
	output := flag.String("output", "", "where the CSV of results goes")
	flag.Parse()
	if err := attack(*targets, *rate, *quantum, *duration, *connections, *output); err != nil {
		fmt.Fprintln(os.Stderr, "attack:", err)
		os.Exit(1)
	}
}

func attack(
	targetsFile string, rate int, quantum, duration time.Duration, connections int, output string,
) error {
	if rate < 0 || quantum < 0 || duration <= 0 || connections < 1 || output == "" {
		return fmt.Errorf("need -rate >= 0, -quantum >= 0, -duration > 0, -connections >= 1, -output")
	}
	source, err := os.Open(targetsFile)
	if err != nil {
		return err
	}
	targets, err := vegeta.ReadAllTargets(vegeta.NewHTTPTargeter(source, nil, nil))
	source.Close()
	if err != nil {
		return fmt.Errorf("reading %s: %w", targetsFile, err)
	}
	out, err := os.Create(output)
	if err != nil {
		return err
	}
	defer out.Close()
	pacer, err := newSteady(rate, quantum)
	if err != nil {
		return err
	}
	defer pacer.timer.Close()

	// No collection during the attack: on its one core, a collection held responses for
	// milliseconds, counted as the server's latency. The limit bounds memory anyway.
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(3 << 30)

	n := uint64(connections)
	attacker := vegeta.NewAttacker(
		vegeta.Workers(n), vegeta.MaxWorkers(n),
		vegeta.Connections(connections), vegeta.MaxConnections(connections),
		vegeta.KeepAlive(true), vegeta.MaxBody(0),
	)
	rows := make([]row, 0, int(float64(rate)*duration.Seconds())+1024)
	for r := range attacker.Attack(vegeta.NewStaticTargeter(targets...), pacer, duration, "") {
		rows = append(rows, row{r.Timestamp.UnixNano(), r.Code, int64(r.Latency)})
	}

	written := bufio.NewWriter(out)
	line := make([]byte, 0, 64)
	for _, r := range rows {
		line = strconv.AppendInt(line[:0], r.start, 10)
		line = append(line, ',')
		line = strconv.AppendUint(line, uint64(r.code), 10)
		line = append(line, ',')
		line = strconv.AppendInt(line, r.latency, 10)
		line = append(line, '\n')
		written.Write(line)
	}
	if err := written.Flush(); err != nil {
		return err
	}
	return out.Close()
}
