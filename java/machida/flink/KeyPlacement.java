package machida.flink;

import org.apache.flink.runtime.state.KeyGroupRangeAssignment;
import org.apache.flink.types.Row;

/**
 * Flink keys that place a state's keys the way machida did: key i on worker i mod N. Flink
 * sends a key to the subtask its hash's key group belongs to, so for key i this finds the
 * smallest integer whose key group lands on subtask i mod parallelism. The key is a one-field
 * Row, as PyFlink's key_by builds it.
 */
public final class KeyPlacement {
    private KeyPlacement() {}

    public static int[] keys(int count, int maxParallelism, int parallelism) {
        int[] keys = new int[count];
        int next = 0;
        for (int i = 0; i < count; i++) {
            int wanted = i % parallelism;
            while (subtask(next, maxParallelism, parallelism) != wanted) {
                next++;
            }
            keys[i] = next++;
        }
        return keys;
    }

    public static int subtask(int key, int maxParallelism, int parallelism) {
        Row row = new Row(1);
        row.setField(0, key);
        return KeyGroupRangeAssignment.assignKeyToParallelOperator(row, maxParallelism, parallelism);
    }
}
