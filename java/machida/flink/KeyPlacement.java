package machida.flink;

import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.Map;
import org.apache.flink.runtime.state.KeyGroupRange;
import org.apache.flink.runtime.state.KeyGroupRangeAssignment;
import org.apache.flink.types.Row;

/**
 * The Flink keys of a state's key indexes: its key table. Flink keeps a key's state in the key
 * group its hash falls in, and gives each subtask a contiguous range of the max parallelism's
 * key groups. A state's key table is chosen once, when a run first starts, and kept with the
 * run (its record and its savepoints), so that every key finds its state again at any
 * parallelism up to the max parallelism: deriving the keys anew from a later parallelism would
 * look for the state under other keys.
 *
 * <p>At the first parallelism the table places key i on subtask i mod parallelism, machida's
 * round-robin rule. Within its subtask's range each key is given a key group spread evenly
 * over the range, so that at other parallelisms Flink's ranges still share the keys out
 * evenly. The key is a one-field Row, as PyFlink's key_by builds it.
 */
public final class KeyPlacement {
    private KeyPlacement() {}

    public static int[] keys(int count, int maxParallelism, int parallelism) {
        int[] keys = new int[count];
        Candidates candidates = new Candidates(maxParallelism);
        for (int i = 0; i < count; i++) {
            int subtask = i % parallelism;
            int rank = i / parallelism;
            int onSubtask = (count - subtask + parallelism - 1) / parallelism;
            KeyGroupRange range = KeyGroupRangeAssignment.computeKeyGroupRangeForOperatorIndex(
                    maxParallelism, parallelism, subtask);
            int groups = range.getEndKeyGroup() - range.getStartKeyGroup() + 1;
            int target = range.getStartKeyGroup()
                    + (int) ((2L * rank + 1) * groups / (2L * onSubtask));
            keys[i] = candidates.take(target);
        }
        return keys;
    }

    public static int keyGroup(int key, int maxParallelism) {
        return KeyGroupRangeAssignment.assignToKeyGroup(row(key), maxParallelism);
    }

    public static int subtask(int key, int maxParallelism, int parallelism) {
        return KeyGroupRangeAssignment.assignKeyToParallelOperator(
                row(key), maxParallelism, parallelism);
    }

    private static Row row(int key) {
        Row row = new Row(1);
        row.setField(0, key);
        return row;
    }

    /** The integers 0, 1, 2, ... handed out by key group, each at most once. */
    private static final class Candidates {
        private final int maxParallelism;
        private final Map<Integer, ArrayDeque<Integer>> spare = new HashMap<>();
        private int next;

        Candidates(int maxParallelism) {
            this.maxParallelism = maxParallelism;
        }

        int take(int group) {
            ArrayDeque<Integer> waiting = spare.get(group);
            if (waiting != null && !waiting.isEmpty()) {
                return waiting.poll();
            }
            while (true) {
                int key = next++;
                int found = keyGroup(key, maxParallelism);
                if (found == group) {
                    return key;
                }
                spare.computeIfAbsent(found, g -> new ArrayDeque<>()).add(key);
            }
        }
    }

    /**
     * {@code KeyPlacement COUNT MAX_PARALLELISM FIRST_PARALLELISM [P...]}: the key table, one
     * line per key index (its Flink key, key group, and subtask at each P), to look at where a
     * run's keys land after a rescale.
     */
    public static void main(String[] args) {
        int count = Integer.parseInt(args[0]);
        int maxParallelism = Integer.parseInt(args[1]);
        int[] table = keys(count, maxParallelism, Integer.parseInt(args[2]));
        for (int i = 0; i < count; i++) {
            StringBuilder line = new StringBuilder();
            line.append(i).append(' ').append(table[i]).append(' ')
                    .append(keyGroup(table[i], maxParallelism));
            for (int a = 3; a < args.length; a++) {
                line.append(' ').append(subtask(table[i], maxParallelism, Integer.parseInt(args[a])));
            }
            System.out.println(line);
        }
    }
}
