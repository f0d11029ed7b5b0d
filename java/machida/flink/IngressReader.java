package machida.flink;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import org.apache.flink.api.connector.source.ReaderOutput;
import org.apache.flink.api.connector.source.SourceReader;
import org.apache.flink.core.io.InputStatus;

/**
 * Reads recorded streams from the ingress, one fetch thread per stream, and emits them as
 * records of whole log entries: one record per socket read (at most {@link #MAX_RECORD}
 * bytes), so the Python steps downstream see a batch of frames per call. The offset after the
 * last emitted record is the split's checkpointed position; once a checkpoint completes the
 * ingress is told it may forget what lies before it.
 */
final class IngressReader implements SourceReader<byte[], IngressSplit> {
    /** Entry kinds, as the ingress writes them (machida_flink/ingress_log.py). */
    static final int OPENED = 1;
    static final int FRAMES = 2;
    static final int CLOSED = 3;
    static final int END = 4;
    static final int ENTRY_HEADER = 9; // u32 length | u8 kind | u32 connection

    static final byte SUBSCRIBE = 1;
    static final byte COMMIT = 2;
    /** A record carries at most this much: big enough to amortise a Java-Python crossing. */
    static final int MAX_RECORD = 256 * 1024;
    /** Records waiting for the task thread; a full queue stops the fetchers reading. */
    static final int QUEUE_RECORDS = 16;
    static final long RETRY_MS = 1000;
    /** How long a reader tries to reach an ingress that does not answer before failing. */
    static final long GIVE_UP_MS = 60_000;

    private final String host;
    private final int port;
    private final byte[] token;
    private final BlockingQueue<Chunk> queue = new ArrayBlockingQueue<>(QUEUE_RECORDS);
    private final Map<String, Fetcher> fetchers = new HashMap<>();
    private final TreeMap<Long, Map<String, Long>> uncommitted = new TreeMap<>();
    private final Object lock = new Object();
    private CompletableFuture<Void> available = new CompletableFuture<>();
    private volatile Throwable failure;
    private boolean noMoreSplits;

    /** Whole entries from one stream, or its end. */
    private static final class Chunk {
        final String split;
        final byte[] data;
        final long endOffset;

        Chunk(String split, byte[] data, long endOffset) {
            this.split = split;
            this.data = data;
            this.endOffset = endOffset;
        }
    }

    /**
     * {@code host}:{@code port}: the ingress's serve port; {@code token}: its secret for this
     * run, sent with every subscription.
     */
    IngressReader(String host, int port, byte[] token) {
        this.host = host;
        this.port = port;
        this.token = token.clone();
    }

    @Override
    public void start() {}

    @Override
    public InputStatus pollNext(ReaderOutput<byte[]> output) throws Exception {
        Throwable failed = failure;
        if (failed != null) {
            throw new IOException("ingress read failed: " + failed.getMessage(), failed);
        }
        Chunk chunk = queue.poll();
        if (chunk == null) {
            return fetchers.isEmpty() && noMoreSplits
                    ? InputStatus.END_OF_INPUT
                    : InputStatus.NOTHING_AVAILABLE;
        }
        Fetcher fetcher = fetchers.get(chunk.split);
        if (chunk.data == null) {
            fetchers.remove(chunk.split);
            if (fetcher != null) {
                fetcher.close();
            }
        } else {
            output.collect(chunk.data);
            if (fetcher != null) {
                fetcher.emitted = chunk.endOffset;
            }
        }
        if (queue.isEmpty()) {
            return fetchers.isEmpty() && noMoreSplits
                    ? InputStatus.END_OF_INPUT
                    : InputStatus.NOTHING_AVAILABLE;
        }
        return InputStatus.MORE_AVAILABLE;
    }

    @Override
    public List<IngressSplit> snapshotState(long checkpointId) {
        List<IngressSplit> splits = new ArrayList<>();
        Map<String, Long> offsets = new HashMap<>();
        for (Fetcher fetcher : fetchers.values()) {
            splits.add(fetcher.split.at(fetcher.emitted));
            offsets.put(fetcher.split.splitId(), fetcher.emitted);
        }
        uncommitted.put(checkpointId, offsets);
        return splits;
    }

    @Override
    public void notifyCheckpointComplete(long checkpointId) {
        Map<String, Long> offsets = uncommitted.get(checkpointId);
        uncommitted.headMap(checkpointId, true).clear();
        if (offsets == null) {
            return;
        }
        for (Map.Entry<String, Long> e : offsets.entrySet()) {
            Fetcher fetcher = fetchers.get(e.getKey());
            if (fetcher != null) {
                fetcher.commit(e.getValue());
            }
        }
    }

    @Override
    public CompletableFuture<Void> isAvailable() {
        synchronized (lock) {
            if (!queue.isEmpty() || failure != null) {
                return CompletableFuture.completedFuture(null);
            }
            if (available.isDone()) {
                available = new CompletableFuture<>();
            }
            return available;
        }
    }

    private void signal() {
        synchronized (lock) {
            available.complete(null);
        }
    }

    @Override
    public void addSplits(List<IngressSplit> splits) {
        for (IngressSplit split : splits) {
            Fetcher fetcher = new Fetcher(split);
            fetchers.put(split.splitId(), fetcher);
            fetcher.start();
        }
    }

    @Override
    public void notifyNoMoreSplits() {
        noMoreSplits = true;
        signal();
    }

    @Override
    public void close() {
        for (Iterator<Fetcher> it = fetchers.values().iterator(); it.hasNext(); ) {
            it.next().close();
            it.remove();
        }
    }

    /** One stream's connection to the ingress: subscribe at an offset, then read entries. */
    private final class Fetcher extends Thread {
        final IngressSplit split;
        volatile long emitted;
        private volatile Socket socket;
        private volatile boolean closed;

        Fetcher(IngressSplit split) {
            super("ingress-fetcher-" + split.splitId());
            setDaemon(true);
            this.split = split;
            this.emitted = split.offset;
        }

        @Override
        public void run() {
            try {
                Socket s = connect();
                if (s == null) {
                    return;
                }
                DataOutputStream out = new DataOutputStream(s.getOutputStream());
                synchronized (this) {
                    out.writeByte(SUBSCRIBE);
                    out.writeInt(split.stream);
                    out.writeLong(split.offset);
                    out.write(token);
                    out.flush();
                }
                read(new DataInputStream(s.getInputStream()));
            } catch (Throwable t) {
                if (!closed) {
                    failure = t;
                    signal();
                }
            }
        }

        private Socket connect() throws IOException, InterruptedException {
            long start = System.currentTimeMillis();
            while (!closed) {
                Socket s = new Socket();
                try {
                    s.setTcpNoDelay(true);
                    s.connect(new InetSocketAddress(host, port), (int) RETRY_MS);
                    socket = s;
                    return s;
                } catch (IOException e) {
                    s.close();
                    if (System.currentTimeMillis() - start > GIVE_UP_MS) {
                        throw new IOException("cannot reach the ingress at " + host + ":" + port
                                + " for " + split.splitId() + ": " + e.getMessage());
                    }
                    Thread.sleep(RETRY_MS);
                }
            }
            return null;
        }

        /** Cut the byte stream at entry boundaries; one queue element per read. */
        private void read(DataInputStream in) throws IOException, InterruptedException {
            byte[] buf = new byte[MAX_RECORD];
            int filled = 0;
            long offset = split.offset;
            while (!closed) {
                int n = in.read(buf, filled, buf.length - filled);
                if (n < 0) {
                    throw new EOFException("the ingress closed " + split.splitId() + " at offset "
                            + (offset + filled) + " before its end");
                }
                filled += n;
                int whole = 0;
                boolean end = false;
                while (filled - whole >= ENTRY_HEADER) {
                    int length = readInt(buf, whole);
                    int kind = buf[whole + 4] & 0xff;
                    if (length < ENTRY_HEADER - 4 || kind < OPENED || kind > END) {
                        throw new IOException("bad ingress entry (length " + length + ", kind "
                                + kind + ") in " + split.splitId() + " at offset " + (offset + whole));
                    }
                    if (kind == END) {
                        end = true;
                        break;
                    }
                    if (filled - whole < 4 + length) {
                        if (4 + length > buf.length && whole == 0) {
                            buf = Arrays.copyOf(buf, 4 + length);
                        }
                        break;
                    }
                    whole += 4 + length;
                }
                if (whole > 0) {
                    offset += whole;
                    put(new Chunk(split.splitId(), Arrays.copyOf(buf, whole), offset));
                    System.arraycopy(buf, whole, buf, 0, filled - whole);
                    filled -= whole;
                }
                if (end) {
                    put(new Chunk(split.splitId(), null, offset));
                    return;
                }
            }
        }

        private void put(Chunk chunk) throws InterruptedException {
            queue.put(chunk);
            signal();
        }

        void commit(long offset) {
            Socket s = socket;
            if (s == null || closed) {
                return;
            }
            try {
                synchronized (this) {
                    DataOutputStream out = new DataOutputStream(s.getOutputStream());
                    out.writeByte(COMMIT);
                    out.writeLong(offset);
                    out.flush();
                }
            } catch (IOException e) {
                // the read loop sees the same broken connection and fails the task
            }
        }

        void close() {
            closed = true;
            Socket s = socket;
            if (s != null) {
                try {
                    s.close();
                } catch (IOException e) {
                    // closing anyway
                }
            }
            interrupt();
        }
    }

    static int readInt(byte[] b, int at) {
        return ((b[at] & 0xff) << 24) | ((b[at + 1] & 0xff) << 16) | ((b[at + 2] & 0xff) << 8)
                | (b[at + 3] & 0xff);
    }
}
