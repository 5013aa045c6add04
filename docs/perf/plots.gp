# gnuplot script for docs/PERFORMANCE.md; scripts/bench runs it in docs/perf
# after chimney-bench wrote rr.dat, cost.dat and latency.dat here.
set terminal pngcairo size 900,560 font "sans,11" noenhanced
set grid
set key top left

# Request/response payload goodput (both directions) vs connections.
set output "goodput_vs_connections.png"
set title "request/response payload goodput vs connections (one core, both ends)"
set logscale x
set xlabel "connections"
set ylabel "Gbit/s (transactions/s x 2 x message size), log scale"
set logscale y
set datafile missing "?"
plot "rr.dat" using 1:($2*2*64*8/1e9) with linespoints lw 2 title "chimney 64 B", \
     "rr.dat" using 1:($3*2*64*8/1e9) with linespoints lw 2 dt 2 title "Linux veth 64 B", \
     "rr.dat" using 1:($4*2*1024*8/1e9) with linespoints lw 2 title "chimney 1 KiB", \
     "rr.dat" using 1:($5*2*1024*8/1e9) with linespoints lw 2 dt 2 title "Linux veth 1 KiB"

# Disconnect-completion latency CDF (ACK of our FIN arrives -> completion).
set output "latency_cdf.png"
set title "disconnect completion latency (ACK of our FIN at the engine -> disconnect_complete)"
set logscale x
set xlabel "microseconds"
set ylabel "fraction of completions"
unset logscale y
set yrange [0:1]
set key bottom right
plot "latency.dat" using 1:2 with lines lw 2 title "chimney (churn workload)"

# Engine cycles per segment vs connections open.
set output "cost_vs_connections.png"
set title "engine cycles per segment (steady bulk stream) vs connections open"
set logscale x
set autoscale y
set yrange [0:*]
set xlabel "connections open (the others idle, keepalive armed in the timer wheel)"
set ylabel "TSC cycles per segment"
set key top left
plot "cost.dat" using 1:2 with linespoints lw 2 title "chimney in-process"
