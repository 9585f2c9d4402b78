// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title RoundRegistry: constant-gas, append-only proofs of federated-learning rounds.
/// @notice Per task: an owner, an aggregator role, a participants root and a model spec hash.
/// Per round: ONE storage slot (the round root) plus one event (everything else), so a commit
/// costs the same for 10 or 100,000 clients.
///
/// The round root is the Merkle root of a two-subtree tree, hashPair(updatesRoot,
/// contributionsRoot): the left subtree holds the round's update leaves, the right one the
/// credits participants may claim (bytes32(0) when the round carries none). Trees follow
/// OpenZeppelin's MerkleProof conventions: sorted pairs hashed with keccak256, leaves hashed
/// twice (leaf = keccak256(bytes.concat(keccak256(abi.encode(fields...))))), so a proof of an
/// update is its proof in the updates tree followed by the contributions root, and a proof of
/// a credit is its proof in the contributions tree followed by the updates root.
contract RoundRegistry {
    struct Task {
        address owner;
        address aggregator;
        bytes32 participantsRoot;
        bytes32 modelSpecHash;
    }

    /// @notice Number of tasks created; task ids run from 1 to taskCount.
    uint256 public taskCount;

    mapping(uint256 task => Task) private _tasks;
    /// @dev The one slot per round. Zero means "not committed": rounds run 1, 2, 3, ... with no gap.
    mapping(uint256 task => mapping(uint256 round => bytes32 root)) private _roots;

    /// @notice Multiparty CKKS key epochs per task, in order (epoch e is index e - 1): the hash of
    /// the collective public key and the Merkle root of its key parties.
    // slither-disable-next-line uninitialized-state (written by push through a storage pointer)
    mapping(uint256 task => KeyEpoch[]) private _keyEpochs;

    struct KeyEpoch {
        bytes32 keyHash;
        bytes32 partiesRoot;
    }

    /// @notice The block in which a round's payloads were sealed (0: not sealed), per task and round.
    mapping(uint256 task => mapping(uint256 round => uint256 blockNumber)) private _sealed;

    /// @notice Credits claimed so far, per task and account: the tally rewards build on.
    mapping(uint256 task => mapping(address account => uint256 total)) public credits;
    /// @notice Whether an account has claimed its credit of a round.
    mapping(uint256 task => mapping(uint256 round => mapping(address account => bool))) public claimed;

    event TaskCreated(
        uint256 indexed task,
        address indexed owner,
        address aggregator,
        bytes32 participantsRoot,
        bytes32 modelSpecHash
    );
    event AggregatorChanged(uint256 indexed task, address aggregator);
    event RoundCommitted(
        uint256 indexed task,
        uint256 indexed round,
        bytes32 updatesRoot,
        bytes32 contributionsRoot,
        bytes32 resultDigest,
        bytes32 metaHash,
        uint256 n
    );
    event KeyEpochSet(uint256 indexed task, uint256 indexed epoch, bytes32 keyHash, bytes32 partiesRoot);
    event RoundSealed(uint256 indexed task, uint256 indexed round, bytes32 updatesRoot, uint256 n);
    event CreditClaimed(uint256 indexed task, uint256 indexed round, address indexed account, uint256 credit);

    error ZeroAddress();
    error UnknownTask(uint256 task);
    error NotOwner(uint256 task, address caller);
    error NotAggregator(uint256 task, address caller);
    error EmptyRound(uint256 task, uint256 round);
    error RoundExists(uint256 task, uint256 round);
    error RoundOutOfOrder(uint256 task, uint256 round);
    error RoundNotCommitted(uint256 task, uint256 round);
    error EmptyKeyEpoch(uint256 task);
    error UnknownKeyEpoch(uint256 task, uint256 epoch);
    error AlreadySealed(uint256 task, uint256 round);
    error AlreadyClaimed(uint256 task, uint256 round, address account);
    error InvalidProof(uint256 task, uint256 round);

    /// @notice Registers a task; the caller becomes its owner. Returns the new task id.
    function createTask(address aggregator, bytes32 participantsRoot, bytes32 modelSpecHash)
        external
        returns (uint256 task)
    {
        if (aggregator == address(0)) revert ZeroAddress();
        task = ++taskCount;
        _tasks[task] = Task(msg.sender, aggregator, participantsRoot, modelSpecHash);
        emit TaskCreated(task, msg.sender, aggregator, participantsRoot, modelSpecHash);
    }

    /// @notice Hands the aggregator role to another account (owner only).
    function setAggregator(uint256 task, address aggregator) external {
        Task storage t = _tasks[task];
        if (t.owner == address(0)) revert UnknownTask(task);
        if (msg.sender != t.owner) revert NotOwner(task, msg.sender);
        if (aggregator == address(0)) revert ZeroAddress();
        t.aggregator = aggregator;
        _dropQuorum(task);
        emit AggregatorChanged(task, aggregator);
    }

    /// @notice Opens key epoch 1, 2, ... of `task` (owner only): `keyHash` names the collective
    /// CKKS public key clients encrypt under, `partiesRoot` the parties that hold its shares (a
    /// Merkle tree of (party, account, commitment, threshold) leaves). Returns the new epoch.
    function setKeyEpoch(uint256 task, bytes32 keyHash, bytes32 partiesRoot) external returns (uint256 epoch) {
        Task storage t = _tasks[task];
        if (t.owner == address(0)) revert UnknownTask(task);
        if (msg.sender != t.owner) revert NotOwner(task, msg.sender);
        if (keyHash == bytes32(0) || partiesRoot == bytes32(0)) revert EmptyKeyEpoch(task);
        KeyEpoch[] storage epochs = _keyEpochs[task];
        epochs.push(KeyEpoch(keyHash, partiesRoot));
        epoch = epochs.length;
        emit KeyEpochSet(task, epoch, keyHash, partiesRoot);
    }

    /// @notice The number of key epochs of `task` (0: none; the latest is in force).
    function keyEpochCount(uint256 task) external view returns (uint256) {
        return _keyEpochs[task].length;
    }

    /// @notice Key epoch `epoch` (from 1) of `task`; reverts with UnknownKeyEpoch if it has none.
    function keyEpoch(uint256 task, uint256 epoch) external view returns (bytes32 keyHash, bytes32 partiesRoot) {
        KeyEpoch[] storage epochs = _keyEpochs[task];
        if (epoch == 0 || epoch > epochs.length) revert UnknownKeyEpoch(task, epoch);
        KeyEpoch storage k = epochs[epoch - 1];
        return (k.keyHash, k.partiesRoot);
    }

    /// @notice Seals the payloads of round `round` of `task` before its result (aggregator only,
    /// once, while the round is the next to commit): a bucketed secure round draws its buckets from
    /// `updatesRoot` and the hash of the block after this one, which the aggregator cannot choose.
    /// The round's commit names the same root; the audit checks that it does.
    function sealRound(uint256 task, uint256 round, bytes32 updatesRoot, uint256 n) external {
        address aggregator = _tasks[task].aggregator;
        if (aggregator == address(0)) revert UnknownTask(task);
        if (msg.sender != aggregator) revert NotAggregator(task, msg.sender);
        if (n == 0 || updatesRoot == bytes32(0)) revert EmptyRound(task, round);
        mapping(uint256 => bytes32) storage roots = _roots[task];
        if (roots[round] != bytes32(0)) revert RoundExists(task, round);
        if (round == 0 || (round > 1 && roots[round - 1] == bytes32(0))) {
            revert RoundOutOfOrder(task, round);
        }
        if (_sealed[task][round] != 0) revert AlreadySealed(task, round);
        _sealed[task][round] = block.number;
        emit RoundSealed(task, round, updatesRoot, n);
    }

    /// @notice The block that sealed round `round` of `task` (0: not sealed).
    function sealedAt(uint256 task, uint256 round) external view returns (uint256) {
        return _sealed[task][round];
    }

    /// @notice Commits round `round` of `task` (aggregator only; round 1 first, then r after r-1).
    /// @dev Gas: one cold SLOAD of the aggregator, one of round r-1, one fresh SSTORE and one
    /// event, whatever n is.
    function commitRound(
        uint256 task,
        uint256 round,
        bytes32 updatesRoot,
        bytes32 contributionsRoot,
        bytes32 resultDigest,
        bytes32 metaHash,
        uint256 n
    ) external {
        address aggregator = _tasks[task].aggregator;
        if (aggregator == address(0)) revert UnknownTask(task);
        if (msg.sender != aggregator) revert NotAggregator(task, msg.sender);
        if (n == 0 || updatesRoot == bytes32(0)) revert EmptyRound(task, round);
        mapping(uint256 => bytes32) storage roots = _roots[task];
        if (roots[round] != bytes32(0)) revert RoundExists(task, round);
        if (round == 0 || (round > 1 && roots[round - 1] == bytes32(0))) {
            revert RoundOutOfOrder(task, round);
        }
        roots[round] = _hashPair(updatesRoot, contributionsRoot);
        emit RoundCommitted(task, round, updatesRoot, contributionsRoot, resultDigest, metaHash, n);
    }

    /// @notice True iff `leaf` (already double-hashed) is in the round's tree by `proof`.
    /// Reverts with RoundNotCommitted for a round that has no commit.
    function verifyInclusion(uint256 task, uint256 round, bytes32 leaf, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        return processProof(leaf, proof) == _committedRoot(task, round);
    }

    /// @notice Adds `credit` to `account`'s tally, once per round, given its proof in the round's
    /// tree (contributions proof, then the updates root). Anyone may submit; the credit always
    /// goes to `account`. The leaf is keccak256(bytes.concat(keccak256(abi.encode(round, account,
    /// credit)))).
    function claim(uint256 task, uint256 round, address account, uint256 credit, bytes32[] calldata proof)
        external
    {
        bytes32 root = _committedRoot(task, round);
        if (claimed[task][round][account]) revert AlreadyClaimed(task, round, account);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(round, account, credit))));
        if (processProof(leaf, proof) != root) revert InvalidProof(task, round);
        claimed[task][round][account] = true;
        credits[task][account] += credit;
        emit CreditClaimed(task, round, account, credit);
    }

    /// @notice True iff `account` is in the task's participants tree by `proof`; the leaf is
    /// keccak256(bytes.concat(keccak256(abi.encode(account)))).
    function isParticipant(uint256 task, address account, bytes32[] calldata proof) external view returns (bool) {
        Task storage t = _tasks[task];
        if (t.owner == address(0)) revert UnknownTask(task);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(account))));
        return processProof(leaf, proof) == t.participantsRoot;
    }

    /// @notice The task's owner, aggregator, participants root and model spec hash.
    function getTask(uint256 task) external view returns (Task memory) {
        Task memory t = _tasks[task];
        if (t.owner == address(0)) revert UnknownTask(task);
        return t;
    }

    /// @notice The stored root of a round: hashPair(updatesRoot, contributionsRoot), or zero.
    function roundRoot(uint256 task, uint256 round) external view returns (bytes32) {
        return _roots[task][round];
    }

    /// @notice The last committed round of a task (0 if none), by galloping then bisecting over
    /// the gap-free rounds: O(log r) reads, no counter to keep up to date in commitRound.
    function latestRound(uint256 task) public view returns (uint256) {
        mapping(uint256 => bytes32) storage roots = _roots[task];
        if (roots[1] == bytes32(0)) return 0;
        uint256 lo = 1;
        uint256 hi = 2;
        while (roots[hi] != bytes32(0)) {
            lo = hi;
            hi <<= 1;
        }
        // roots[lo] is set and roots[hi] is not; keep that invariant while narrowing.
        while (hi - lo > 1) {
            uint256 mid = (lo + hi) >> 1;
            if (roots[mid] != bytes32(0)) lo = mid;
            else hi = mid;
        }
        return lo;
    }

    /// @notice The root that `proof` leads to from `leaf`, hashing sorted pairs bottom-up.
    function processProof(bytes32 leaf, bytes32[] calldata proof) public pure returns (bytes32 node) {
        node = leaf;
        for (uint256 i = 0; i < proof.length; ++i) {
            node = _hashPair(node, proof[i]);
        }
    }

    function _committedRoot(uint256 task, uint256 round) private view returns (bytes32 root) {
        root = _roots[task][round];
        if (root == bytes32(0)) revert RoundNotCommitted(task, round);
    }

    /// @dev keccak256 of the two nodes, smaller first, so a proof needs no left/right flags.
    /// Hashed in the scratch space (0x00-0x3f) to avoid growing memory on every level.
    function _hashPair(bytes32 a, bytes32 b) private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            switch lt(a, b)
            case 1 {
                mstore(0x00, a)
                mstore(0x20, b)
            }
            default {
                mstore(0x00, b)
                mstore(0x20, a)
            }
            h := keccak256(0x00, 0x40)
        }
    }


    // ---- Quorum of aggregators: a round is final when t of m aggregators attest one tuple ----
    //
    // A task in quorum mode has the registry itself as its aggregator (so nobody can call
    // commitRound) and m seats. Each seat keeps ONE slot, its latest vote (round, tuple id),
    // written over round after round: setQuorum initializes it non-zero, so a vote is a
    // non-zero-to-non-zero write (2,900 + 2,100 cold) and not a fresh slot (22,100). Counting
    // the votes for a tuple reads the other m - 1 seats; the task's last final (round, tuple id,
    // finalizing seat) is one more slot, written over at each finalization, which stands for the
    // finalizing seat's own vote (its slot is not written: 2,900 saved). The finalizing vote
    // names the seats that voted otherwise in one fixed-size event (the vote itself is each
    // one's RoundAttested), so neither n nor the number of conflicts changes its gas.

    /// @notice The most aggregators a quorum may have: each vote reads every seat (2,100 gas
    /// each), and at m = 8 a vote stays under 60,000 gas and the finalizing one under 80,000
    /// (conflicts named or not).
    uint256 public constant MAX_AGGREGATORS = 8;
    /// @dev A seat's slot before its first vote, and the last final's before the first quorum
    /// round (tuple id 1, round 0): non-zero so that every later write updates a slot.
    uint256 private constant _UNSET = 1 << 64;

    /// @dev (seat index + 1) | m << 8 | t << 16 per member; zero for everyone else.
    mapping(uint256 task => mapping(address account => uint256 seat)) private _seats;
    /// @dev Per seat index: its latest vote, tuple id << 64 | round.
    mapping(uint256 task => mapping(uint256 index => uint256 vote)) private _votes;
    /// @dev The members by seat index (m is in their seats).
    mapping(uint256 task => mapping(uint256 index => address account)) private _members;
    /// @dev The last final round of a quorum task: tuple id << 64 | (finalizing seat index + 1)
    /// << 56 | round (tuple id 1: unknown; seat 0: none, a round final before the quorum).
    mapping(uint256 task => uint256 last) private _lastFinal;

    event QuorumChanged(uint256 indexed task, address[] aggregators, uint256 threshold);
    /// @notice `aggregator` voted `tuple` for `round`: the first 24 bytes of keccak256(abi.encode(
    /// updatesRoot, contributionsRoot, resultDigest, metaHash, n)) (192 bits: a collision costs
    /// 2^96 hashes). Every vote but the finalizing one, whose RoundCommitted stands for it.
    event RoundAttested(uint256 indexed task, uint256 indexed round, address indexed aggregator, bytes24 tuple);
    /// @notice The fields of a tuple first attested without finalizing the round (the fields of
    /// a final tuple are in its RoundCommitted event).
    event TupleProposed(
        uint256 indexed task,
        uint256 indexed round,
        bytes24 indexed tuple,
        bytes32 updatesRoot,
        bytes32 contributionsRoot,
        bytes32 resultDigest,
        bytes32 metaHash,
        uint256 n
    );
    /// @notice Evidence: `aggregator` attested `attested` after the round was final with
    /// `finalTuple` (a late vote; earlier ones are named by AttestationConflicts).
    event AttestationConflict(
        uint256 indexed task, uint256 indexed round, address indexed aggregator, bytes24 attested, bytes24 finalTuple
    );
    /// @notice Evidence, emitted by the finalizing vote: bit i of `seats` set when seat i of the
    /// quorum (QuorumChanged's order) voted for the round a tuple other than `finalTuple`; that
    /// vote, who and what, is the seat's RoundAttested event of the round.
    event AttestationConflicts(uint256 indexed task, uint256 indexed round, bytes24 finalTuple, uint256 seats);

    error NoQuorum(uint256 task);
    error BadQuorum(uint256 task, uint256 aggregators, uint256 threshold);
    error DuplicateAggregator(uint256 task, address aggregator);
    error AlreadyAttested(uint256 task, uint256 round, address aggregator);
    error AttestationTooLate(uint256 task, uint256 round);

    /// @notice Names the m aggregators of `task` and the threshold t (owner only; 1 <= t <= m
    /// <= MAX_AGGREGATORS). m = 1 is today's single aggregator (commitRound, no seats); m > 1
    /// makes the registry the task's aggregator: rounds are then final by attestRound. A change
    /// discards the votes of a round not final yet.
    function setQuorum(uint256 task, address[] calldata aggregators, uint256 threshold) external {
        Task storage t = _tasks[task];
        if (t.owner == address(0)) revert UnknownTask(task);
        if (msg.sender != t.owner) revert NotOwner(task, msg.sender);
        uint256 m = aggregators.length;
        if (m == 0 || m > MAX_AGGREGATORS || threshold == 0 || threshold > m) {
            revert BadQuorum(task, m, threshold);
        }
        _dropQuorum(task);
        if (m == 1) {
            if (aggregators[0] == address(0)) revert ZeroAddress();
            t.aggregator = aggregators[0];
        } else {
            for (uint256 i = 0; i < m; ++i) {
                address a = aggregators[i];
                if (a == address(0)) revert ZeroAddress();
                if (_seats[task][a] != 0) revert DuplicateAggregator(task, a);
                _seats[task][a] = (i + 1) | (m << 8) | (threshold << 16);
                _votes[task][i] = _UNSET;
                _members[task][i] = a;
            }
            t.aggregator = address(this);
            _lastFinal[task] = _UNSET | latestRound(task);
        }
        emit QuorumChanged(task, aggregators, threshold);
    }

    /// @notice The aggregators of `task` in seat order and its threshold ([aggregator], 1 for a
    /// task with a single aggregator).
    function quorum(uint256 task) external view returns (address[] memory aggregators, uint256 threshold) {
        Task storage t = _tasks[task];
        if (t.owner == address(0)) revert UnknownTask(task);
        if (t.aggregator != address(this)) {
            aggregators = new address[](1);
            aggregators[0] = t.aggregator;
            return (aggregators, 1);
        }
        uint256 seat = _seats[task][_members[task][0]];
        aggregators = new address[]((seat >> 8) & 0xff);
        for (uint256 i = 0; i < aggregators.length; ++i) {
            aggregators[i] = _members[task][i];
        }
        threshold = seat >> 16;
    }

    /// @notice One aggregator's vote for round `round` of a quorum task: the tuple is final (its
    /// root written, RoundCommitted emitted) when the threshold's worth of distinct aggregators
    /// voted it. Round r is open once r - 1 is final; the last final round still takes late votes
    /// (an agreeing one is recorded, another is evidence: AttestationConflict); older ones are
    /// AttestationTooLate. Each aggregator votes once per round, rounds in order.
    /// @dev Gas: the seat, the vote slot, the last final, the other m - 1 votes and an event;
    /// the finalizing vote writes the last final instead of its vote slot and adds the round's
    /// one fresh slot, RoundCommitted and, when some seat voted otherwise, one
    /// AttestationConflicts. Nothing grows with n or with the number of conflicts.
    function attestRound(
        uint256 task,
        uint256 round,
        bytes32 updatesRoot,
        bytes32 contributionsRoot,
        bytes32 resultDigest,
        bytes32 metaHash,
        uint256 n
    ) external {
        uint256 seat = _seats[task][msg.sender]; // non-zero only in quorum mode (_dropQuorum)
        if (seat == 0) _refuseAttestation(task);
        if (n == 0 || updatesRoot == bytes32(0)) revert EmptyRound(task, round);
        bytes24 tuple = bytes24(keccak256(abi.encode(updatesRoot, contributionsRoot, resultDigest, metaHash, n)));
        (bool proposed, bool isFinal) = _vote(task, round, seat, tuple);
        if (proposed) {
            emit TupleProposed(task, round, tuple, updatesRoot, contributionsRoot, resultDigest, metaHash, n);
        }
        if (isFinal) {
            emit RoundCommitted(task, round, updatesRoot, contributionsRoot, resultDigest, metaHash, n);
            _roots[task][round] = _hashPair(updatesRoot, contributionsRoot);
        }
    }

    /// @dev Checks and records the sender's vote for `tuple`; says whether the tuple's fields
    /// must be emitted (its first vote, or evidence) and whether the round is now final.
    function _vote(uint256 task, uint256 round, uint256 seat, bytes24 tuple)
        private
        returns (bool proposed, bool isFinal)
    {
        uint256 last = _lastFinal[task];
        uint256 index = (seat & 0xff) - 1;
        mapping(uint256 => uint256) storage votes = _votes[task];
        _checkOrder(task, round, uint64(votes[index]), last, index);
        uint256 vote = (uint256(uint192(tuple)) << 64) | round;
        if (round == uint56(last)) {
            votes[index] = vote;
            return (_lateVote(task, round, tuple, last), false);
        }
        (uint256 count, uint256 others) = _tally(votes, (seat >> 8) & 0xff, index, vote);
        if (count < seat >> 16) {
            votes[index] = vote;
            emit RoundAttested(task, round, msg.sender, tuple);
            return (count == 1, false);
        }
        // The finalizing vote is the RoundCommitted event's transaction: no RoundAttested, and
        // the last final (with its seat) stands for its vote slot.
        if (_roots[task][round] != bytes32(0)) revert RoundExists(task, round);
        _lastFinal[task] = (uint256(uint192(tuple)) << 64) | ((index + 1) << 56) | round;
        if (others != 0) emit AttestationConflicts(task, round, tuple, others);
        return (false, true);
    }

    /// @dev Round r is open once r - 1 is final; the last final round takes late votes; each
    /// aggregator votes once per round, rounds in order (`own`: the last round it voted other
    /// than by finalizing; `index`: its seat, which the last final names if it finalized).
    function _checkOrder(uint256 task, uint256 round, uint256 own, uint256 last, uint256 index) private view {
        uint256 lastRound = uint56(last);
        if (round == 0 || round > lastRound + 1) revert RoundOutOfOrder(task, round);
        if (round < lastRound) revert AttestationTooLate(task, round);
        if (own == round || (round == lastRound && uint8(last >> 56) == index + 1)) {
            revert AlreadyAttested(task, round, msg.sender);
        }
        if (own > round) revert RoundOutOfOrder(task, round);
        // A round final before the quorum was set has no known tuple to compare with.
        if (round == lastRound && last >> 64 == 1) revert AttestationTooLate(task, round);
    }

    /// @dev A vote for the last final round: recorded; evidence if it is not the final tuple.
    /// Returns whether the tuple's fields must be emitted.
    function _lateVote(uint256 task, uint256 round, bytes24 tuple, uint256 last) private returns (bool) {
        emit RoundAttested(task, round, msg.sender, tuple);
        bytes24 finalTuple = bytes24(uint192(last >> 64));
        if (tuple == finalTuple) return false;
        emit AttestationConflict(task, round, msg.sender, tuple, finalTuple);
        return true;
    }

    /// @dev How many seats other than `index` voted `vote` (plus this one), and the bitmask of
    /// the seats that voted another tuple in the same round.
    function _tally(mapping(uint256 => uint256) storage votes, uint256 m, uint256 index, uint256 vote)
        private
        view
        returns (uint256 count, uint256 others)
    {
        count = 1;
        uint256 round = uint64(vote);
        for (uint256 i = 0; i < m; ++i) {
            uint256 v = votes[i];
            if (i == index || uint64(v) != round) continue;
            if (v == vote) ++count;
            else others |= 1 << i;
        }
    }

    /// @dev Leaves quorum mode: the seats of the task's members are cleared (setAggregator and
    /// setQuorum call it, so a non-zero seat always means the task is in quorum mode).
    function _dropQuorum(uint256 task) private {
        mapping(uint256 => address) storage members = _members[task];
        uint256 m = (_seats[task][members[0]] >> 8) & 0xff;
        for (uint256 i = 0; i < m; ++i) {
            delete _seats[task][members[i]];
        }
    }

    function _refuseAttestation(uint256 task) private view {
        Task storage t = _tasks[task];
        if (t.owner == address(0)) revert UnknownTask(task);
        if (t.aggregator != address(this)) revert NoQuorum(task);
        revert NotAggregator(task, msg.sender);
    }
}
